"""The run schema: one YAML file describes a whole run (model, data, method, training, eval, output).

Every field has a default and a one-line description (``help``). Unknown keys and conflicting
options are rejected at load with a message that says what to write instead. ``key=value``
overrides use dotted paths (``training.lr=1e-4``). The resolved config is saved in the run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.errors import ConfigError

TASKS = ("classification", "sft", "reward", "dpo", "grpo")
METHODS = ("full", "freeze", "unfreeze", "lora", "dora", "ia3", "prefix", "prompt")
PEFT_METHODS = ("lora", "dora", "ia3", "prefix", "prompt")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f(
        "minilm-l6", "Bundled alias (see `tuneforge models`), a local folder, a .gguf file, or a hub id."
    )
    dtype: str = _f("float32", "Weights dtype when loading: float32 or bfloat16.")
    dropout: float | None = _f(
        None, "Override the model's dropout probabilities (hidden and attention); null keeps them."
    )
    chat_template: str | None = _f(
        None, "Chat template for models without one: a name (chatml) or a Jinja string."
    )
    trust_remote_code: bool = _f(False, "Allow custom model code from a local folder.")
    attn_implementation: str = _f(
        "auto",
        "Attention kernel for training: auto (tuneforge's on CPU for sequences up to 1,024 tokens: eager attention "
        "without repeated keys/values that recomputes long queries' scores in backward, faster than SDPA's "
        "backward there; the model's default otherwise), tuneforge, eager, sdpa or flash_attention_2.",
    )


@dataclass
class DataConfig:
    train: str = _f(
        "rotten-tomatoes",
        "Training data: a bundled alias (rotten-tomatoes, 20newsgroups, ...) or a JSONL/CSV/TSV/Parquet file.",
    )
    validation: str | None = _f(
        None, "Validation file; null splits `validation_fraction` off the training data."
    )
    test: str | None = _f(None, "Test file; null uses the alias's test split or splits `test_fraction` off.")
    format: str = _f(
        "auto",
        "Row format: auto, classification, messages, sharegpt, alpaca, prompt_completion, text, preference, kto.",
    )
    text_column: str = _f("text", "Column with the input text (classification).")
    label_column: str = _f("label", "Column with the label (classification).")
    labels: list[str] | None = _f(
        None, "Label names in id order; null takes the sorted labels found in the training data."
    )
    validation_fraction: float = _f(
        0.1, "Fraction of training rows held out for validation when no file is given (stratified)."
    )
    test_fraction: float = _f(
        0.1, "Fraction of training rows held out for test when no test file or split exists (stratified)."
    )
    max_length: int = _f(128, "Maximum tokens per example; longer ones are truncated and counted.")
    limit: int | None = _f(None, "Use at most this many training rows (after the split), for quick runs.")
    eval_limit: int | None = _f(None, "Use at most this many validation and test rows.")
    allow_leakage: bool = _f(False, "Train even when the audit finds train/test overlap.")
    audit: bool = _f(True, "Run the data audit as a pre-flight step.")
    near_dup_threshold: float = _f(
        0.8, "Audit: word-set Jaccard similarity from which two examples count as near-duplicates (0-1]."
    )


@dataclass
class MethodConfig:
    name: str = _f("full", "What trains: full, freeze, unfreeze, lora, dora, ia3, prefix, prompt.")
    freeze_layers: int | None = _f(
        None, "freeze: freeze only the lowest N layers (and embeddings); null freezes the whole base."
    )
    unfreeze_every: str | int = _f(
        "epoch", "unfreeze: unfreeze one more layer from the top every N optimizer steps, or 'epoch'."
    )
    layer_lr_decay: float = _f(
        1.0, "full/unfreeze: learning rate multiplier per layer going down (1.0 = none, ULMFiT uses 1/2.6)."
    )
    r: int = _f(16, "lora/dora: adapter rank.")
    alpha: int = _f(32, "lora/dora: scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(
        0.0, "lora/dora: dropout on the adapter input (0 skips it: no extra copy of the activations)."
    )
    target_modules: str | list[str] = _f("all-linear", "lora/dora/ia3: module names to adapt, or all-linear.")
    num_virtual_tokens: int = _f(20, "prefix/prompt: number of virtual tokens.")


@dataclass
class TrainingConfig:
    epochs: float = _f(1, "Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps.")
    batch_size: int = _f(16, "Examples per micro-batch on each process.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (exactly a larger batch).")
    lr: float = _f(5e-5, "Peak learning rate.")
    head_lr: float | None = _f(None, "Learning rate of the new output head; null uses `lr`.")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms).")
    scheduler: str = _f("linear", "Decay after warmup: linear, cosine or constant.")
    warmup_ratio: float | None = _f(
        None, "Fraction of steps spent warming up; null means 0.06 unless warmup_steps is set."
    )
    warmup_steps: int | None = _f(None, "Warmup steps; overrides warmup_ratio.")
    max_grad_norm: float | None = _f(1.0, "Clip the gradient norm to this value; null disables clipping.")
    precision: str = _f(
        "auto", "auto (bf16 autocast where the GPU or CPU supports it, else fp32), fp32 or bf16."
    )
    seed: int = _f(42, "Seed for splits, shuffling, initialisation and dropout.")
    eval_every: int | None = _f(
        None, "Evaluate on validation every N optimizer steps; null evaluates once per epoch."
    )
    save_every: int | None = _f(
        None, "Write a resumable checkpoint every N steps; null saves at each evaluation."
    )
    keep_checkpoints: int = _f(2, "Resumable checkpoints kept (older ones are deleted).")
    metric: str = _f(
        "auto", "Validation metric for early stopping and the best checkpoint (auto: accuracy or loss)."
    )
    early_stopping_patience: int | None = _f(
        None, "Stop after this many evaluations without improvement; null never stops early."
    )
    log_every: int = _f(10, "Log training loss every N optimizer steps.")
    group_by_length: bool = _f(
        True, "Batch examples of similar length together (less padding, same examples per step)."
    )
    device: str = _f("auto", "auto, cpu or cuda.")
    max_batch_tokens: int | str | None = _f(
        "auto",
        "Split a micro-batch whose padded tokens exceed this (caps activation memory; the gradient is unchanged): "
        "auto (as many tokens as keep the measured activations under 512 MB on CPU, a quarter of the GPU), "
        "a number, or null (never split).",
    )
    bf16_frozen_base: bool = _f(
        True,
        "Adapter methods under bf16: keep the frozen base weights in bf16 (less memory, no per-step casts).",
    )
    compile: str | bool = _f(
        "auto",
        "torch.compile the transformer blocks (one shared graph, dynamic shapes): auto (runs of 20+ steps on "
        "models with 5M+ parameters in their layers, where a compiler is available), true or false.",
    )
    memory_check: bool = _f(
        True,
        "Print a pre-flight memory estimate and refuse to start a run that would not fit (false: warn only).",
    )


@dataclass
class EvalConfig:
    batch_size: int = _f(64, "Batch size for evaluation.")
    baseline: bool = _f(
        True, "Also evaluate a reference (majority class or base model) beside the tuned model."
    )
    report: bool = _f(True, "Write report.md and report.html in the run folder at the end of training.")
    bootstrap_samples: int = _f(1000, "Bootstrap resamples for the report's 95% confidence intervals.")
    forgetting: bool = _f(
        True, "Language models: compare base and tuned perplexity on a general-English reference text."
    )
    forgetting_text: str = _f(
        "builtin",
        "Reference text for forgetting: builtin (English prose shipped with tuneforge), a .txt file, a data file or a bundled alias.",
    )
    forgetting_data: str | None = _f(
        None,
        "A second task dataset (file or alias) the tuned model should stay good at: base vs tuned perplexity on it.",
    )
    forgetting_threshold: float = _f(
        0.1,
        "Warn when the tuned model's reference perplexity exceeds the base model's by more than this fraction.",
    )
    forgetting_max_texts: int = _f(
        200, "Use at most this many paragraphs/rows of the reference text (and of forgetting_data)."
    )
    bias: bool = _f(
        True, "Run the bias probe: swap demographic terms in held-out inputs and measure how the model moves."
    )
    bias_terms: str | None = _f(
        None, "A JSON/YAML file of extra term groups for the bias probe (shape of resources/bias_terms.json)."
    )
    bias_max_examples: int = _f(200, "Probe at most this many held-out inputs per term category.")


@dataclass
class OutputConfig:
    dir: str = _f("runs", "Folder that holds run folders.")
    name: str | None = _f(None, "Run folder name; null makes one from task, model, method and time.")
    overwrite: bool = _f(False, "Replace an existing run folder of the same name (unless resuming).")


@dataclass
class SFTConfig:
    train_on_inputs: bool = _f(
        False, "Also train on prompt tokens (system/user turns); false trains on assistant turns only."
    )
    packing: bool = _f(
        False, "Pack several examples into each row of data.max_length tokens (each still sees only itself)."
    )
    system_prompt: str | None = _f(
        None, "System message added to every conversation that has none; null keeps the template's."
    )
    samples: int = _f(
        5, "Held-out prompts answered by the base and the tuned model after training (samples.jsonl)."
    )
    max_new_tokens: int = _f(64, "Longest answer, in tokens, for sample generations, chat and generate.")
    temperature: float = _f(0.0, "Sampling temperature for generation; 0 is greedy (deterministic).")
    fast_loss: bool = _f(
        True,
        "Apply the output layer only where loss is taken (same loss, less time and memory); false uses full logits.",
    )


PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "kto")


@dataclass
class PreferenceConfig:
    loss_type: str = _f(
        "sigmoid",
        "dpo: sigmoid (DPO), ipo, hinge, orpo (no reference model) or kto (unpaired good/bad rows; pairs are split into them).",
    )
    beta: float = _f(
        0.1,
        "dpo: how far the policy may move from the reference (DPO/IPO/hinge/KTO beta); orpo: weight of the odds-ratio term.",
    )
    label_smoothing: float = _f(
        0.0, "dpo sigmoid: assumed fraction of wrongly ordered pairs (conservative DPO), in [0, 0.5)."
    )
    desirable_weight: float = _f(1.0, "kto: loss weight of desirable (label true) rows.")
    undesirable_weight: float = _f(1.0, "kto: loss weight of undesirable (label false) rows.")
    center_rewards: float | None = _f(
        None, "reward: weight of a (r_chosen + r_rejected)^2 penalty that keeps rewards near 0; null: none."
    )


@dataclass
class GRPOConfig:
    rewards: list[str] = _f(
        ["ends_with_period"],
        "Reward functions, summed: built-ins (ends_with_period, max_words:N, length:N, short_answer:N, regex:PATTERN, contains:TEXT), module:function or file.py:function, or a reward-model run folder.",
    )
    reward_weights: list[float] | None = _f(
        None, "Weight of each reward function, in order; null weighs each 1."
    )
    group_size: int = _f(4, "Completions sampled per prompt; each is scored against the others of its group.")
    max_new_tokens: int = _f(32, "Longest sampled completion, in tokens.")
    temperature: float = _f(1.0, "Sampling temperature for the completions (must be > 0).")
    top_p: float = _f(1.0, "Nucleus sampling: keep the smallest set of tokens with this total probability.")
    kl_beta: float = _f(
        0.04,
        "Weight of the KL penalty to the reference model (the base, or the adapter switched off); 0 drops it.",
    )
    scale_rewards: bool = _f(
        True, "Divide each group's advantages by its reward std (false: only subtract the group mean)."
    )
    eval_prompts: int = _f(
        32, "Held-out prompts answered (greedy) to measure the mean reward at each evaluation."
    )


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "method": MethodConfig,
    "training": TrainingConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
    "sft": SFTConfig,
    "preference": PreferenceConfig,
    "grpo": GRPOConfig,
}


@dataclass
class RunConfig:
    task: str = _f("classification", "classification, sft, reward, dpo or grpo.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML value against a field annotation (str, int, float, bool, None, list[str])."""
    options = [
        a.strip() for a in str(annotation).split("|")
    ]  # annotations are strings (postponed evaluation)
    ok_types: list[type] = []
    for opt in options:
        ok_types.append(
            {"str": str, "int": int, "float": float, "bool": bool, "None": type(None)}.get(opt, list)
        )
    if value is None and type(None) in ok_types:
        return None
    if isinstance(value, bool):
        if bool in ok_types:
            return value
    elif isinstance(value, int) and int in ok_types:
        return value
    elif isinstance(value, (int, float)) and float in ok_types:
        return float(value)
    elif isinstance(value, str) and str in ok_types:
        return value
    elif isinstance(value, str) and float in ok_types:
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, list) and list in ok_types:
        if "list[float]" in str(annotation):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{where}: expected a list of numbers, got {value!r}.")
            return [float(v) for v in value]
        return [str(v) for v in value]
    names = " or ".join(t.__name__ if t is not type(None) else "null" for t in ok_types)
    raise ConfigError(f"{where}: expected {names}, got {value!r} ({type(value).__name__}).")


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key '{key}'.{_suggest(key, fields)} Valid keys: {', '.join(fields)}."
            )
        kwargs[key] = _coerce(value, fields[key].type, f"{where}.{key}")
    return cls(**kwargs)


def from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Build and validate a RunConfig from a nested dict (as read from YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (task:, model:, data:, ...).")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    for key in raw:
        if key not in top:
            raise ConfigError(
                f"{source}: unknown section '{key}'.{_suggest(key, top)} Sections: {', '.join(top)}."
            )
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        kwargs[name] = _build(cls, raw.get(name) or {}, f"{source}: {name}")
    if "task" in raw:
        kwargs["task"] = raw["task"]
    try:
        return RunConfig(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': write it as section.key=value, e.g. training.lr=1e-4.")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section.")
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found. Example configs live in configs/.")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)}).") from None
        source = str(p)
    raw = apply_overrides(raw, overrides or [])
    return from_dict(raw, source)


def validate(cfg: RunConfig) -> None:
    """Reject values out of range and options that conflict, saying what to write instead."""
    m, t, d = cfg.method, cfg.training, cfg.data
    if cfg.task not in TASKS:
        raise ConfigError(
            f"task '{cfg.task}' is unknown.{_suggest(cfg.task, TASKS)} Choose one of {', '.join(TASKS)}."
        )
    if m.name not in METHODS:
        raise ConfigError(
            f"method.name '{m.name}' is unknown.{_suggest(m.name, METHODS)} Choose one of {', '.join(METHODS)}."
        )
    choices = {
        "training.scheduler": (t.scheduler, ("linear", "cosine", "constant")),
        "training.precision": (t.precision, ("auto", "fp32", "bf16")),
        "training.device": (t.device, ("auto", "cpu", "cuda")),
        "model.dtype": (cfg.model.dtype, ("float32", "bfloat16")),
        "model.attn_implementation": (
            cfg.model.attn_implementation,
            ("auto", "tuneforge", "eager", "sdpa", "flash_attention_2", "flex_attention"),
        ),
        "training.compile": (t.compile, ("auto", True, False, "true", "false")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(
                f"{key}: '{value}' is not one of {', '.join(allowed)}.{_suggest(str(value), allowed)}"
            )
    positive = {
        "training.batch_size": t.batch_size,
        "training.grad_accum": t.grad_accum,
        "data.max_length": d.max_length,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}.")
    mbt = t.max_batch_tokens
    if mbt not in ("auto", None) and (not isinstance(mbt, int) or isinstance(mbt, bool) or mbt < 1):
        raise ConfigError(
            f"training.max_batch_tokens must be auto, a positive number of tokens or null, got {mbt!r}."
        )
    if t.lr <= 0:
        raise ConfigError(f"training.lr must be positive, got {t.lr}.")
    if t.epochs <= 0 and t.max_steps is None:
        raise ConfigError("training.epochs must be positive (or set training.max_steps).")
    for key, value in {
        "data.validation_fraction": d.validation_fraction,
        "data.test_fraction": d.test_fraction,
    }.items():
        if not 0 <= value < 0.5:
            raise ConfigError(f"{key} must be in [0, 0.5), got {value}.")
    if t.warmup_ratio is not None and not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"training.warmup_ratio must be in [0, 1), got {t.warmup_ratio}.")
    if t.warmup_steps is not None and t.warmup_ratio is not None:
        raise ConfigError("training.warmup_steps and training.warmup_ratio are both set: keep one of them.")
    if m.freeze_layers is not None and m.name != "freeze":
        raise ConfigError(
            f"method.freeze_layers is only used by method 'freeze' (method.name is '{m.name}'): remove it."
        )
    if m.layer_lr_decay != 1.0 and m.name not in ("full", "unfreeze"):
        raise ConfigError(
            "method.layer_lr_decay applies to 'full' and 'unfreeze' only: remove it or change method.name."
        )
    if not 0 < m.layer_lr_decay <= 1:
        raise ConfigError(f"method.layer_lr_decay must be in (0, 1], got {m.layer_lr_decay}.")
    if isinstance(m.unfreeze_every, str) and m.unfreeze_every != "epoch":
        raise ConfigError(
            f"method.unfreeze_every must be 'epoch' or a number of steps, got '{m.unfreeze_every}'."
        )
    if isinstance(m.unfreeze_every, int) and m.unfreeze_every < 1:
        raise ConfigError("method.unfreeze_every must be at least 1 step.")
    if cfg.task == "classification" and m.name in ("prefix", "prompt"):
        raise ConfigError(
            f"method '{m.name}' is for language-model tasks; for classification use lora, freeze or full."
        )
    if cfg.sft.packing and m.name in ("prefix", "prompt"):
        raise ConfigError(
            f"sft.packing does not work with method '{m.name}' (its virtual tokens would be shared by every "
            f"packed example): set sft.packing=false or use lora/dora/ia3/full."
        )
    if cfg.sft.samples < 0 or cfg.sft.max_new_tokens < 1 or cfg.sft.temperature < 0:
        raise ConfigError("sft.samples must be >= 0, sft.max_new_tokens >= 1 and sft.temperature >= 0.")
    if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
        raise ConfigError("training.early_stopping_patience must be at least 1 (or null to disable).")
    if t.early_stopping_patience is not None and d.validation is None and d.validation_fraction == 0:
        raise ConfigError(
            "early stopping needs validation data: set data.validation or data.validation_fraction > 0."
        )
    validate_eval(cfg.eval)
    validate_preference(cfg)


def validate_preference(cfg: RunConfig) -> None:
    """Preference tuning (reward, dpo) and GRPO: ranges, and options that only one loss or task reads."""
    p, g, m = cfg.preference, cfg.grpo, cfg.method
    if p.loss_type not in PREFERENCE_LOSSES:
        raise ConfigError(
            f"preference.loss_type '{p.loss_type}' is unknown.{_suggest(p.loss_type, PREFERENCE_LOSSES)} "
            f"Choose one of {', '.join(PREFERENCE_LOSSES)}."
        )
    if p.beta <= 0:
        raise ConfigError(f"preference.beta must be positive, got {p.beta}.")
    if not 0 <= p.label_smoothing < 0.5:
        raise ConfigError(f"preference.label_smoothing must be in [0, 0.5), got {p.label_smoothing}.")
    if p.label_smoothing and p.loss_type != "sigmoid":
        raise ConfigError(
            f"preference.label_smoothing applies to loss_type sigmoid only (loss_type is '{p.loss_type}'): remove it."
        )
    if (p.desirable_weight, p.undesirable_weight) != (1.0, 1.0) and p.loss_type != "kto":
        raise ConfigError(
            "preference.desirable_weight/undesirable_weight apply to loss_type kto only: remove them or set "
            "preference.loss_type=kto."
        )
    if p.desirable_weight <= 0 or p.undesirable_weight <= 0:
        raise ConfigError("preference.desirable_weight and undesirable_weight must be positive.")
    if p.center_rewards is not None and (cfg.task != "reward" or p.center_rewards < 0):
        raise ConfigError(
            "preference.center_rewards is a non-negative weight for task 'reward' only: remove it or set task: reward."
        )
    if cfg.task == "reward" and m.name in ("prefix", "prompt"):
        raise ConfigError(
            f"method '{m.name}' cannot train a reward model (a classification head): use lora, dora, full or freeze."
        )
    if cfg.task == "grpo":
        if g.group_size < 2:
            raise ConfigError(
                f"grpo.group_size must be at least 2 (advantages compare completions of one prompt), got {g.group_size}."
            )
        if g.max_new_tokens < 1 or g.eval_prompts < 0:
            raise ConfigError("grpo.max_new_tokens must be at least 1 and grpo.eval_prompts at least 0.")
        if g.temperature <= 0 or not 0 < g.top_p <= 1:
            raise ConfigError("grpo.temperature must be > 0 (GRPO samples) and grpo.top_p in (0, 1].")
        if g.kl_beta < 0:
            raise ConfigError(f"grpo.kl_beta must be >= 0, got {g.kl_beta}.")
        if not g.rewards:
            raise ConfigError(
                "grpo.rewards is empty: name at least one reward function, e.g. [ends_with_period]."
            )
        if g.reward_weights is not None and len(g.reward_weights) != len(g.rewards):
            raise ConfigError(
                f"grpo.reward_weights has {len(g.reward_weights)} weights for {len(g.rewards)} reward functions: "
                f"give one per function, in order."
            )


def validate_eval(e: EvalConfig) -> None:
    """The report's options: ranges, and settings that would be silently ignored."""
    if e.bootstrap_samples < 100:
        raise ConfigError(
            f"eval.bootstrap_samples must be at least 100 for a stable 95% interval, got {e.bootstrap_samples}."
        )
    if e.forgetting_threshold <= 0:
        raise ConfigError(
            f"eval.forgetting_threshold must be a positive fraction (0.1 = 10%), got {e.forgetting_threshold}."
        )
    for key in ("forgetting_max_texts", "bias_max_examples"):
        if getattr(e, key) < 1:
            raise ConfigError(f"eval.{key} must be at least 1, got {getattr(e, key)}.")
    if not e.forgetting and (e.forgetting_text != "builtin" or e.forgetting_data is not None):
        raise ConfigError(
            "eval.forgetting_text/forgetting_data are set but eval.forgetting is false: remove them "
            "or set eval.forgetting=true."
        )
    if not e.bias and e.bias_terms is not None:
        raise ConfigError("eval.bias_terms is set but eval.bias is false: remove it or set eval.bias=true.")


def describe() -> str:
    """The configuration reference (Markdown), generated from the schema."""
    lines = ["| key | default | description |", "|---|---|---|"]
    for f in dataclasses.fields(RunConfig):
        if f.name in SECTIONS:
            for sf in dataclasses.fields(SECTIONS[f.name]):
                default = sf.default if sf.default is not dataclasses.MISSING else sf.default_factory()
                lines.append(f"| `{f.name}.{sf.name}` | `{default}` | {sf.metadata['help']} |")
        else:
            lines.append(f"| `{f.name}` | `{f.default}` | {f.metadata['help']} |")
    return "\n".join(lines)
