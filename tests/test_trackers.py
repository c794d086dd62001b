"""training.report_to: a tiny run leaves TensorBoard event files and an MLflow run whose metrics equal
metrics.jsonl, plus the config and the final evaluation; unknown or missing trackers get a clear message."""

import json

import pytest
from helpers import tiny_cfg

import tuneforge
from tuneforge.config import from_dict
from tuneforge.errors import ConfigError
from tuneforge.train import trackers


@pytest.fixture(scope="module")
def tracked_run(tiny_bert, tmp_path_factory):
    from conftest import sentiment_rows

    tmp = tmp_path_factory.mktemp("trackers")
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(120)))
    cfg = tiny_cfg(
        tiny_bert,
        str(data),
        tmp,
        training={"max_steps": 6, "eval_every": 3, "log_every": 1, "report_to": ["tensorboard", "mlflow"]},
        eval={"bias": False, "report": False},
    )
    return tuneforge.train(cfg)


def _jsonl_values(run_path):
    records = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, dict[int, float]] = {}
    for r in records:
        for k, v in trackers.record_values(r).items():
            expected.setdefault(k, {})[r["step"]] = v
    return records, expected


def test_mlflow_metrics_equal_metrics_jsonl(tracked_run, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tracked_run.path
    assert (path / "mlflow.db").exists()
    run_id = json.loads((path / "trackers.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == path.name
    records, expected = _jsonl_values(path)
    assert {r["split"] for r in records} == {"train", "validation"}
    assert "train/loss" in expected and "validation/accuracy" in expected
    for key, by_step in expected.items():
        history = client.get_metric_history(run_id, key)
        assert {m.step: m.value for m in history} == pytest.approx(by_step), key
    # the config as parameters, the final evaluation as eval/... metrics equal to eval.json
    assert run.data.params["training.max_steps"] == "6" and run.data.params["task"] == "classification"
    ev = json.loads((path / "eval.json").read_text())
    assert run.data.metrics["eval/tuned/accuracy"] == pytest.approx(ev["tuned"]["accuracy"])
    assert run.data.metrics["eval/baseline/accuracy"] == pytest.approx(ev["baseline"]["accuracy"])


def test_tensorboard_event_files_hold_the_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tracked_run.path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    main = [e for e in events if e.parent == tracked_run.path / "tensorboard"]
    acc = EventAccumulator(str(main[0].parent)).Reload()
    _, expected = _jsonl_values(tracked_run.path)
    for key in ("train/loss", "validation/accuracy"):
        got = {e.step: e.value for e in acc.Scalars(key)}
        assert got == pytest.approx(expected[key], rel=1e-6), key  # event files store float32
    assert "eval/tuned/accuracy" in acc.Tags()["scalars"]


def test_report_to_rejects_unknown_and_duplicate_names():
    with pytest.raises(ConfigError, match=r"'mlfow' is not a tracker.*Did you mean 'mlflow'"):
        from_dict({"training": {"report_to": ["mlfow"]}})
    with pytest.raises(ConfigError, match="twice"):
        from_dict({"training": {"report_to": ["mlflow", "mlflow"]}})
    assert from_dict({}).training.report_to == []


def test_a_missing_tracker_names_its_extra(monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name)
    )
    with pytest.raises(ConfigError, match=r"pip install 'tuneforge\[wandb\]'"):
        trackers.check_installed(["tensorboard", "wandb"])
    trackers.check_installed(["tensorboard"])


def test_a_failing_tracker_is_switched_off_not_fatal(tmp_path):
    class Broken:
        def log(self, values, step=None):
            raise RuntimeError("server down")

        def finish(self):
            pass

    class Good:
        def __init__(self):
            self.seen = []

        def log(self, values, step=None):
            self.seen.append((step, values))

        def finish(self):
            pass

    good = Good()
    t = trackers.RunTrackers(tmp_path, {"broken": Broken(), "good": good})
    t.log({"step": 2, "split": "train", "loss": 0.5, "padding": None})
    t.log({"step": 3, "split": "train", "loss": 0.4})
    assert list(t.trackers) == ["good"]
    assert good.seen == [(2, {"train/loss": 0.5}), (3, {"train/loss": 0.4})]
