"""A finished (or stopped) run folder, and what a user does with it: evaluate, predict, inspect.

Layout of a run folder::

    config.yaml       the resolved config           metrics.jsonl   train/validation metrics by step
    data.json         split sizes, labels, audit    run.json        steps, timing, memory, parameters
    checkpoints/      resumable states (latest)     model/          the final model or PEFT adapter
    eval.json         test metrics beside the baseline
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuneforge.config import load_config
from tuneforge.errors import TuneforgeError


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.yaml").exists():
            raise TuneforgeError(f"{self.path}: not a tuneforge run folder (no config.yaml).")
        self.config = load_config(self.path / "config.yaml")
        self._model = None
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def model_dir(self) -> Path:
        d = self.path / "model"
        if not d.exists():
            raise TuneforgeError(
                f"{self.path}: no final model yet (training did not finish). Resume it with "
                f"`tuneforge train --resume {self.path}`."
            )
        return d

    @property
    def is_adapter(self) -> bool:
        return (self.model_dir / "adapter_config.json").exists()

    def load_model(self):
        """The final model as transformers (or PEFT, for adapters) loads it from ``model/``."""
        if self._model is None:
            from tuneforge.utils import quiet_libraries

            quiet_libraries()
            if self.config.task in ("classification", "reward"):  # reward: a one-output sequence classifier
                self._model = load_sequence_classifier(self.model_dir)
            elif self.config.task in LM_TASKS:
                self._model = load_causal_lm_dir(self.model_dir, self.config)
            else:
                raise TuneforgeError(f"task '{self.config.task}' has no loader in this version.")
            self._model.eval()
        return self._model

    def load_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        return self._tokenizer

    def generate(
        self,
        prompts: str | list,
        max_new_tokens: int | None = None,
        base: bool = False,
        temperature: float | None = None,
    ) -> list[str]:
        """Answer prompts (strings or conversations) with the tuned model, or with the base model (``base=True``)."""
        from tuneforge.serve.generate import generate
        from tuneforge.tasks.sft import base_model

        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]
        s = self.config.sft
        kw = dict(
            max_new_tokens=max_new_tokens or s.max_new_tokens,
            system_prompt=s.system_prompt,
            temperature=s.temperature if temperature is None else temperature,
        )
        model, tok = self.load_model(), self.load_tokenizer()
        if not base:
            return generate(model, tok, prompts, **kw)
        with base_model(model, self.config) as b:
            return generate(b, tok, prompts, **kw)

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def summary(self) -> dict:
        path = self.path / "run.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @torch.no_grad()
    def score(self, prompts: str | list, responses: str | list[str], batch_size: int = 16) -> list[float]:
        """Reward-model scores (task reward) of responses to prompts; one prompt may be given for many responses.

        A prompt is a string (one user turn) or a conversation (a list of {role, content}).
        """
        if self.config.task != "reward":
            raise TuneforgeError(
                f"{self.path}: score needs a reward model run (task: reward); this run is '{self.config.task}'."
            )
        from tuneforge.tasks.pairs import pad
        from tuneforge.tasks.reward import encode_response

        responses = [responses] if isinstance(responses, str) else list(responses)
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [prompts] * len(responses)
        if len(prompts) != len(responses):
            raise TuneforgeError(
                f"score: {len(prompts)} prompts for {len(responses)} responses; give one prompt, or one per response."
            )
        model, tok = self.load_model(), self.load_tokenizer()
        device = next(model.parameters()).device
        as_turns = lambda p: [{"role": "user", "content": p}] if isinstance(p, str) else list(p)  # noqa: E731
        ids = [
            encode_response(
                tok, as_turns(p), [{"role": "assistant", "content": r}], self.config.data.max_length
            )[0]
            for p, r in zip(prompts, responses)
        ]
        out: list[float] = []
        for start in range(0, len(ids), batch_size):
            batch, mask = pad(ids[start : start + batch_size], tok.pad_token_id)
            out += (
                model(input_ids=batch.to(device), attention_mask=mask.to(device))
                .logits[:, 0]
                .float()
                .tolist()
            )
        return out

    @torch.no_grad()
    def predict(self, texts: str | list[str], max_length: int | None = None) -> list[dict]:
        """Classify texts: label, its probability, and every label's probability."""
        if isinstance(texts, str):
            texts = [texts]
        model, tok = self.load_model(), self.load_tokenizer()
        id2label = model.config.id2label
        enc = tok(
            texts,
            truncation=True,
            max_length=max_length or self.config.data.max_length,
            padding=True,
            return_tensors="pt",
        )
        probs = model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits.float().softmax(-1)
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

    def evaluate(self, data: str | None = None, task=None) -> dict:
        """Test metrics of the final model beside the baseline; writes eval.json (or eval-<file>.json)."""
        from tuneforge.tasks import task_class

        cfg = self.config
        if data is not None:
            from tuneforge.tasks.classification import _examples

            task = task or task_class(cfg.task)(cfg, load_model=False)
            cls = type(task)
            test = task.read_file(data) if hasattr(task, "read_file") else _examples(data, cfg.data)
            split = {"train": task.splits["train"], "test": test}
            task = cls(cfg, splits={**split, "validation": []}, load_model=False)
            out_name = f"eval-{Path(data).stem}.json"
        else:
            task = task or task_class(cfg.task)(cfg, load_model=False)
            out_name = "eval.json"
        result = task.full_evaluation(self.load_model(), "test", baseline=cfg.eval.baseline)
        result["model"] = str(self.model_dir)
        result["data"] = data or (cfg.data.test or f"{cfg.data.train} (test split)")
        (self.path / out_name).write_text(json.dumps(result, indent=1))
        if "samples" in result:  # LM tasks: sample answers, base beside tuned
            (self.path / out_name.replace("eval", "samples", 1).replace(".json", ".jsonl")).write_text(
                "".join(json.dumps(s) + "\n" for s in result["samples"])
            )
        return result


LM_TASKS = ("sft", "dpo", "grpo")


def load_causal_lm_dir(model_dir: Path, config=None):
    """A causal LM folder, or a PEFT adapter on its base (the run's model.name, else the adapter's base path)."""
    from transformers import AutoModelForCausalLM

    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        if config is not None:
            from tuneforge.models.load import load_causal_lm

            base = load_causal_lm(config.model.name, config.model.dtype)
        else:
            base_path = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
            base = AutoModelForCausalLM.from_pretrained(base_path)
        if (model_dir / "generation_config.json").exists():
            from transformers import GenerationConfig

            base.generation_config = GenerationConfig.from_pretrained(model_dir)
        return PeftModel.from_pretrained(base, model_dir)
    return AutoModelForCausalLM.from_pretrained(model_dir)


def load_sequence_classifier(model_dir: Path):
    """Load a classifier folder, or a PEFT adapter on its base with the label set saved in the run."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        adapter = json.loads((model_dir / "adapter_config.json").read_text())
        labels = json.loads((model_dir / "labels.json").read_text())
        base_path = adapter["base_model_name_or_path"]
        config = AutoConfig.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        if getattr(config, "pad_token_id", None) is None and (model_dir / "labels.json").exists():
            from transformers import AutoTokenizer

            config.pad_token_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
        base = AutoModelForSequenceClassification.from_pretrained(base_path, config=config)
        return PeftModel.from_pretrained(base, model_dir)
    return AutoModelForSequenceClassification.from_pretrained(model_dir)
