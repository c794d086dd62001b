"""A finished (or stopped) run folder, and what a user does with it: evaluate, predict, inspect.

Layout of a run folder::

    config.yaml       the resolved config           metrics.jsonl   train/validation metrics by step
    data.json         split sizes, labels, audit    run.json        steps, timing, memory, parameters
    checkpoints/      resumable states (latest)     model/          the final model or PEFT adapter
    eval.json         test metrics beside the baseline
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from tuneforge.config import load_config
from tuneforge.errors import TuneforgeError
from tuneforge.train.runfolder import atomic_write_json


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.yaml").exists():
            raise TuneforgeError(f"{self.path}: not a tuneforge run folder (no config.yaml).")
        self.config = load_config(self.path / "config.yaml")
        self._model = None
        self._tokenizer = None
        self._checked = False  # model/ files checked (check_model_files)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def model_dir(self) -> Path:
        d = self.path / "model"
        if not d.is_dir():
            if self.summary().get("finished"):
                raise TuneforgeError(
                    f"{self.path}: model/ is missing although the run finished. {self._repair()}"
                )
            raise TuneforgeError(
                f"{self.path}: no final model yet (training did not finish). Resume it with "
                f"`tuneforge train --resume {self.path}`."
            )
        return d

    @property
    def is_adapter(self) -> bool:
        return (self.model_dir / "adapter_config.json").exists()

    @property
    def task_class(self):
        """The run's task class (its kind, metrics, how its model loads)."""
        from tuneforge.tasks import get_task

        return get_task(self.config.task)

    @property
    def device(self):
        """Where the run trained (run.json), when that device is here; else the CPU."""
        import torch

        want = str(self.summary().get("device", "cpu"))
        if want.startswith("cuda") and torch.cuda.is_available():
            return torch.device(want)
        return torch.device("cpu")

    def load_model(self):
        """The final model as transformers (or PEFT, for adapters) loads it from ``model/``, on the run's device."""
        if self._model is None:
            from safetensors import SafetensorError

            from tuneforge.utils import quiet_libraries

            quiet_libraries()
            model_dir = self.check_model_files()
            try:
                model = self.task_class.load_model(model_dir, self.config)
            except (OSError, ValueError, KeyError, json.JSONDecodeError, SafetensorError) as e:
                raise TuneforgeError(
                    f"{model_dir}: the saved model cannot be loaded ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}). A file is missing or damaged; {self._repair()}"
                ) from None
            self._model = model.to(self.device).eval()
        return self._model

    def check_model_files(self) -> Path:
        """``model/``, once its files are checked without loading them: a missing config or weights file, a JSON
        file that does not parse or a truncated safetensors file is named, with the fix."""
        from tuneforge.config import PEFT_METHODS
        from tuneforge.models.load import model_folder_fault

        model_dir = self.model_dir
        if not self._checked:
            adapter = self.config.method.name in PEFT_METHODS or (model_dir / "adapter_config.json").exists()
            fault = model_folder_fault(model_dir, adapter)
            if fault:
                what = f"the {self.config.method.name} adapter" if adapter else "the model"
                raise TuneforgeError(f"{model_dir}: {fault}, so {what} cannot be loaded. {self._repair()}")
            self._checked = True
        return model_dir

    def _repair(self) -> str:
        """How to get a sound ``model/`` back: finish the run again, or (a finished run) restore or retrain it."""
        if not self.summary().get("finished"):
            return f"Finish the run again with `tuneforge train --resume {self.path}`."
        return (
            f"Restore {self.path / 'model'} from a copy (e.g. one `tuneforge export` wrote), or train the run again "
            f"(`tuneforge train {self.path / 'config.yaml'} output.name=NEW_NAME`)."
        )

    def load_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            model_dir = self.check_model_files()
            if not _has_vocabulary(model_dir):
                raise TuneforgeError(
                    f"{model_dir}: no tokenizer.json (nor a vocabulary file): every word would become an "
                    f"unknown token. Copy the tokenizer files of {self.config.model.name} into {model_dir}."
                )
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
                raise TuneforgeError(
                    f"{model_dir}: the tokenizer cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]}); "
                    f"a tokenizer file is missing or damaged. Copy the tokenizer files of {self.config.model.name} "
                    f"into {model_dir}."
                ) from None
        return self._tokenizer

    def _need(self, *kinds: str, verb: str) -> None:
        cls = self.task_class
        if cls.kind not in kinds:
            raise TuneforgeError(
                f"{self.path}: {verb} needs a run whose model is a {' or '.join(k.replace('_', ' ') for k in kinds)}; "
                f"this run's task is '{cls.name}' (a {cls.kind.replace('_', ' ')})."
            )

    def generate(
        self,
        prompts: str | list,
        max_new_tokens: int | None = None,
        base: bool = False,
        temperature: float | None = None,
    ) -> list[str]:
        """Answer prompts (strings or conversations) with the tuned model, or with the base model (``base=True``)."""
        from tuneforge.models.generate import generate
        from tuneforge.tasks.lm import reference_model

        self._need("language_model", "policy", verb="generate")
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]
        empty = [i for i, p in enumerate(prompts) if isinstance(p, str) and not p.strip()]
        if empty:
            raise TuneforgeError(
                f"generate: prompt {empty[0] + 1} of {len(prompts)} is empty; give the prompt text."
            )
        own = getattr(self.task_class, "generate_for_run", None)  # e.g. seq2seq: its own model and settings
        if own is not None:
            return own(
                self.load_model(),
                self.load_tokenizer(),
                self.config,
                prompts,
                max_new_tokens,
                temperature,
                base,
            )
        s = self.config.sft
        kw = dict(
            max_new_tokens=s.max_new_tokens if max_new_tokens is None else max_new_tokens,
            system_prompt=s.system_prompt,
            temperature=s.temperature if temperature is None else temperature,
        )
        check_generation(kw["max_new_tokens"], kw["temperature"])
        model, tok = self.load_model(), self.load_tokenizer()
        if not base:
            return generate(model, tok, prompts, **kw)
        with reference_model(model, self.config) as b:
            return generate(b, tok, prompts, **kw)

    def metrics(self) -> list[dict]:
        """The logged train and validation metrics (a torn last line, from a kill, is skipped)."""
        from tuneforge.train.runfolder import read_metrics

        return read_metrics(self.path / "metrics.jsonl")

    def summary(self) -> dict:
        path = self.path / "run.json"
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError) as e:
            raise TuneforgeError(f"{path}: unreadable ({e}). The run folder is damaged.") from None

    def score(self, prompts: str | list, responses: str | list[str], batch_size: int = 16) -> list[float]:
        """Reward-model scores (task reward) of responses to prompts; one prompt may be given for many responses.

        A prompt is a string (one user turn) or a conversation (a list of {role, content}).
        """
        from tuneforge.tasks.reward import score_responses

        self._need("reward_model", verb="score")
        responses = [responses] if isinstance(responses, str) else list(responses)
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts] * len(responses)
        if len(prompts) != len(responses):
            raise TuneforgeError(
                f"score: {len(prompts)} prompts for {len(responses)} responses; give one prompt, or one per response."
            )
        return score_responses(
            self.load_model(),
            self.load_tokenizer(),
            self.config.data.max_length,
            prompts,
            responses,
            batch_size,
        )

    @torch.no_grad()
    def predict(self, texts: str | list[str], max_length: int | None = None) -> list[dict]:
        """Classify texts: label, its probability, and every label's probability (a seq2seq run: {"output"})."""
        if isinstance(texts, str):
            texts = [texts]
        own = getattr(self.task_class, "predict_for_run", None)  # e.g. seq2seq: the output text
        if own is not None:
            return own(self.load_model(), self.load_tokenizer(), self.config, list(texts))
        self._need("classifier", verb="predict")
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise TuneforgeError(
                f"predict: text {empty[0] + 1} of {len(texts)} is empty; give the text to classify."
            )
        model, tok = self.load_model(), self.load_tokenizer()
        device = next(model.parameters()).device
        id2label = model.config.id2label
        enc = tok(
            texts,
            truncation=True,
            max_length=max_length or self.config.data.max_length,
            padding=True,
            return_tensors="pt",
        )
        probs = (
            model(**{k: enc[k].to(device) for k in ("input_ids", "attention_mask")})
            .logits.float()
            .softmax(-1)
            .cpu()
        )
        out = []
        for row in probs:
            i = int(row.argmax())
            out.append(
                {
                    "label": id2label[i],
                    "score": float(row[i]),
                    "probs": {id2label[j]: float(p) for j, p in enumerate(row)},
                }
            )
        return out

    def explain(self, texts=None, prompts=None, responses=None, labels=None, n_steps: int = 50) -> list[dict]:
        """Integrated-gradients explanations (``tuneforge.eval.explain``): each word's contribution to a classifier's
        label for ``texts``, or to a language model's log-probability of ``responses`` to ``prompts``."""
        from tuneforge.eval import explain as ex

        cls, cfg = self.task_class, self.config
        if cls.kind == "classifier":
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            model, tok = self.load_model(), self.load_tokenizer()
            return ex.explain_classifier(model, tok, texts, labels, cfg.data.max_length, n_steps)
        self._need("language_model", "policy", verb="explain")
        if cls.encoder_decoder:
            raise TuneforgeError(f"{self.path}: explain does not support encoder-decoder (seq2seq) runs yet.")
        if not prompts:
            raise TuneforgeError(
                f"{self.path}: a language model's explanation is of a response to a prompt: give prompts and "
                'responses (CLI: tuneforge explain RUN --prompt "..." --response "...").'
            )
        one = isinstance(prompts, str) or bool(
            prompts and isinstance(prompts[0], dict)
        )  # a string or a conversation
        prompts = [prompts] if one else list(prompts or [])
        responses = [responses] if isinstance(responses, str) else list(responses or [])
        model, tok = self.load_model(), self.load_tokenizer()
        return ex.explain_lm(
            model, tok, prompts, responses, cfg.sft.system_prompt, cfg.data.max_length, n_steps
        )

    def evaluate(self, data: str | None = None, task=None) -> dict:
        """Test metrics of the final model beside the baseline; writes eval.json (or eval-<file>.json)."""
        cfg, cls = self.config, self.task_class
        task = task or cls(cfg, load_model=False)
        out_name = "eval.json"
        if data is not None:
            test = task.read_file(data)
            task = cls(
                cfg, splits={"train": task.splits["train"], "validation": [], "test": test}, load_model=False
            )
            out_name = f"eval-{Path(data).stem}.json"
        result = task.full_evaluation(self.load_model(), "test", baseline=cfg.eval.baseline)
        result["model"] = str(self.model_dir)
        result["data"] = data or (cfg.data.test or f"{cfg.data.train} (test split)")
        atomic_write_json(self.path / out_name, result)
        if "samples" in result:  # LM tasks: sample answers, base beside tuned
            (self.path / out_name.replace("eval", "samples", 1).replace(".json", ".jsonl")).write_text(
                "".join(json.dumps(s) + "\n" for s in result["samples"])
            )
        return result


def check_generation(max_new_tokens: int, temperature: float, flags: bool = False) -> None:
    """Generation settings a model can use: at least one new token, a temperature of 0 (greedy) or more.
    ``flags``: name the command-line options (--max-new-tokens, --temperature) rather than the arguments."""
    name = ("--max-new-tokens", "--temperature") if flags else ("max_new_tokens", "temperature")
    if max_new_tokens < 1:
        raise TuneforgeError(
            f"{name[0]} must be at least 1, got {max_new_tokens} (the longest answer, in tokens; e.g. 256)."
        )
    if not math.isfinite(temperature) or temperature < 0:
        raise TuneforgeError(
            f"{name[1]} must be 0 (greedy) or more, got {temperature} (e.g. 0.7 samples; 0 is deterministic)."
        )


def _has_vocabulary(model_dir: Path) -> bool:
    """A tokenizer folder with its vocabulary (fast tokenizer file, or a slow tokenizer's vocabulary)."""
    names = (
        "tokenizer.json",
        "vocab.txt",
        "vocab.json",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
    )
    return any((model_dir / n).exists() for n in names)
