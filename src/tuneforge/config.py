"""The run schema: one YAML file describes a whole run (model, data, method, training, eval, output).

Every field has a default and a one-line description (``help``); a number's range and a text's choices
sit beside it in the field's metadata (``ge``/``gt``/``le``/``lt``, ``choices``, ``why``). Unknown keys
and conflicting options are rejected at load with a message that says what to write instead.
``key=value`` overrides use dotted paths (``training.lr=1e-4``). The resolved config is saved in the
run folder; on ``--resume`` only ``RESUMABLE_KEYS`` may differ from it (``check_resume_changes``).

Validation is a list of small rules (``RULES``), one check each, run in order by ``validate``; then
every check the tasks registered (``register_task_check``), which own everything that depends on the
task's name. No rule here compares task names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.errors import ConfigError

PEFT_METHODS = (
    "lora",
    "dora",
    "ia3",
    "prefix",
    "prompt",
    "qlora",
    "houlsby",
    "pfeiffer",
)  # qlora: LoRA on a 4-bit base (GPU)
METHODS = ("full", "freeze", "unfreeze", *PEFT_METHODS)
VIRTUAL_TOKEN_METHODS = ("prefix", "prompt")
DATA_FORMATS = (
    "auto",
    "classification",
    "messages",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "text",
    "preference",
    "kto",
)
PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "kto")
GRPO_LOSS_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
ZERO_SHOT_PROMPT = "Text: {text}\nQuestion: which label fits this text best: {labels}?\nAnswer:"


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A schema field: its default, one-line help, and optional checks (ge, gt, le, lt, choices, why)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f(
        "minilm-l6", "Bundled alias (see `tuneforge models`), a local folder, a .gguf file, or a hub id."
    )
    dtype: str = _f(
        "float32", "Weights dtype when loading: float32 or bfloat16.", choices=("float32", "bfloat16")
    )
    dropout: float | None = _f(
        None,
        "Override the model's dropout probabilities (hidden and attention); null keeps them.",
        ge=0,
        lt=1,
    )
    chat_template: str | None = _f(
        None, "Chat template for models without one: a name (chatml) or a Jinja string."
    )
    trust_remote_code: bool = _f(False, "Allow custom model code from a local folder.")
    seq2seq_warm_start: bool = _f(
        False,
        "task seq2seq: build an encoder-decoder from this encoder (BERT-like, e.g. minilm-l6) for both halves, "
        "with new cross-attention (Rothe et al. 2020); false loads a T5/BART/Marian model as it is.",
    )
    from_run: str | None = _f(
        None,
        "A previous run folder to start from: its tuned model (or adapter, see continual.adapter) replaces "
        "model.name; `tuneforge train CONFIG --from RUN_DIR` sets it. See docs/continual.md.",
    )
    attn_implementation: str = _f(
        "auto",
        "Attention kernel for training: auto (tuneforge's on CPU for sequences up to 1,024 tokens: eager attention "
        "without repeated keys/values that recomputes long queries' scores in backward, faster than SDPA's "
        "backward there; the model's default otherwise), tuneforge, eager, sdpa or flash_attention_2.",
        choices=("auto", "tuneforge", "eager", "sdpa", "flash_attention_2", "flex_attention"),
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
        choices=DATA_FORMATS,
    )
    text_column: str = _f("text", "Column with the input text (classification).")
    label_column: str = _f("label", "Column with the label (classification).")
    labels: list[str] | None = _f(
        None, "Label names in id order; null takes the sorted labels found in the training data."
    )
    validation_fraction: float = _f(
        0.1,
        "Fraction of training rows held out for validation when no file is given (stratified).",
        ge=0,
        lt=0.5,
    )
    test_fraction: float = _f(
        0.1,
        "Fraction of training rows held out for test when no test file or split exists (stratified).",
        ge=0,
        lt=0.5,
    )
    max_length: int = _f(128, "Maximum tokens per example; longer ones are truncated and counted.", ge=1)
    limit: int | None = _f(
        None,
        "Use at most this many training rows (after the split), for quick runs.",
        ge=1,
        why="null uses every row",
    )
    eval_limit: int | None = _f(
        None, "Use at most this many validation and test rows.", ge=1, why="null uses every row"
    )
    allow_leakage: bool = _f(False, "Train even when the audit finds train/test overlap.")
    allow_audit_errors: bool = _f(
        False,
        "Train even when the pre-flight audit finds error findings (rows that cannot train correctly); "
        "warnings never stop a run.",
    )
    audit: bool = _f(True, "Run the data audit as a pre-flight step.")
    counterfactual_augmentation: bool = _f(
        False,
        "Add, for each training row that mentions a bias-probe term (gender words, first names, "
        "nationalities), a copy with the terms swapped and the same label or answer.",
    )
    counterfactual_terms: str | None = _f(
        None,
        "A JSON/YAML file of extra term groups for counterfactual augmentation (shape of bias_terms.json).",
    )
    near_dup_threshold: float = _f(
        0.8,
        "Audit: word-set Jaccard similarity from which two examples count as near-duplicates (0-1].",
        gt=0,
        le=1,
    )


@dataclass
class MethodConfig:
    name: str = _f(
        "full",
        "What trains: full, freeze, unfreeze, lora, dora, ia3, prefix, prompt, qlora (GPU), houlsby, pfeiffer.",
        choices=METHODS,
    )
    freeze_layers: int | str | None = _f(
        None,
        "freeze: freeze only the lowest N layers (and embeddings); null freezes the whole base; auto picks N "
        "with a linear probe per layer before training (`tuneforge probe`; classification).",
        choices=("auto",),
        ge=0,
    )
    unfreeze_every: str | int = _f(
        "epoch",
        "unfreeze: unfreeze one more layer from the top every N optimizer steps, or 'epoch'.",
        choices=("epoch",),
        ge=1,
        why="a number of optimizer steps",
    )
    layer_lr_decay: float = _f(
        1.0,
        "full/unfreeze: learning rate multiplier per layer going down (1.0 = none, ULMFiT uses 1/2.6).",
        gt=0,
        le=1,
    )
    r: int = _f(16, "lora/dora: adapter rank.", ge=1, why="the adapter's rank; 8 to 64 are usual")
    alpha: int = _f(32, "lora/dora: scaling numerator (scale = alpha / r).", gt=0, why="often 2 x r")
    lora_dropout: float = _f(
        0.0,
        "lora/dora: dropout on the adapter input (0 skips it: no extra copy of the activations).",
        ge=0,
        lt=1,
    )
    target_modules: str | list[str] = _f("all-linear", "lora/dora/ia3: module names to adapt, or all-linear.")
    num_virtual_tokens: int = _f(20, "prefix/prompt: number of virtual tokens.", ge=1)
    reduction_factor: int = _f(
        16, "houlsby/pfeiffer: hidden size / bottleneck size of each adapter.", ge=1, why="16 is usual"
    )
    non_linearity: str = _f(
        "relu", "houlsby/pfeiffer: activation inside the adapter.", choices=("relu", "gelu", "silu", "tanh")
    )


@dataclass
class TrainingConfig:
    epochs: float = _f(1, "Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = _f(
        None, "Stop after this many optimizer steps.", ge=1, why="null trains for training.epochs"
    )
    batch_size: int = _f(16, "Examples per micro-batch on each process.", ge=1)
    grad_accum: int = _f(1, "Micro-batches per optimizer step (exactly a larger batch).", ge=1)
    lr: float = _f(5e-5, "Peak learning rate.", gt=0)
    head_lr: float | None = _f(
        None, "Learning rate of the new output head; null uses `lr`.", gt=0, why="null uses training.lr"
    )
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms).", ge=0)
    scheduler: str = _f(
        "linear", "Decay after warmup: linear, cosine or constant.", choices=("linear", "cosine", "constant")
    )
    warmup_ratio: float | None = _f(
        None, "Fraction of steps spent warming up; null means 0.06 unless warmup_steps is set.", ge=0, lt=1
    )
    warmup_steps: int | None = _f(None, "Warmup steps; overrides warmup_ratio.", ge=0)
    max_grad_norm: float | None = _f(
        1.0,
        "Clip the gradient norm to this value; null disables clipping.",
        gt=0,
        why="null disables clipping",
    )
    precision: str = _f(
        "auto",
        "auto (bf16 autocast where the GPU or CPU supports it, else fp32), fp32 or bf16.",
        choices=("auto", "fp32", "bf16"),
    )
    seed: int = _f(42, "Seed for splits, shuffling, initialisation and dropout.", ge=0)
    eval_every: int | None = _f(
        None,
        "Evaluate on validation every N optimizer steps; null evaluates once per epoch.",
        ge=1,
        why="null evaluates once per epoch",
    )
    save_every: int | None = _f(
        None,
        "Write a resumable checkpoint every N steps; null saves at each evaluation.",
        ge=1,
        why="null saves at each evaluation",
    )
    keep_checkpoints: int = _f(2, "Resumable checkpoints kept (older ones are deleted).", ge=1)
    metric: str = _f(
        "auto", "Validation metric for early stopping and the best checkpoint (auto: accuracy or loss)."
    )
    early_stopping_patience: int | None = _f(
        None,
        "Stop after this many evaluations without improvement; null never stops early.",
        ge=1,
        why="null never stops early",
    )
    log_every: int = _f(10, "Log training loss every N optimizer steps.", ge=1)
    group_by_length: bool = _f(
        True, "Batch examples of similar length together (less padding, same examples per step)."
    )
    device: str = _f("auto", "auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))
    threads: int | str = _f(
        "auto",
        "CPU threads per process: auto (the cores this process may use, from CPU affinity and the cgroup "
        "quota, divided among the local processes) or a number.",
        choices=("auto",),
        ge=1,
    )
    max_batch_tokens: int | str | None = _f(
        "auto",
        "Split a micro-batch whose padded tokens exceed this (caps activation memory; the gradient is unchanged): "
        "auto (as many tokens as keep the measured activations under 512 MB on CPU, a quarter of the GPU), "
        "a number, or null (never split).",
        choices=("auto",),
        ge=1,
        why="tokens per micro-batch; null never splits",
    )
    bf16_frozen_base: bool = _f(
        True,
        "Adapter methods under bf16: keep the frozen base weights in bf16 (less memory, no per-step casts).",
    )
    compile: str | bool = _f(
        "auto",
        "torch.compile the transformer blocks (one shared graph, dynamic shapes): auto (runs of 20+ steps, 100+ for GRPO, on "
        "models with 5M+ parameters in their layers, where a compiler is available), true or false.",
        choices=("auto", "true", "false"),
    )
    memory_check: bool = _f(
        True,
        "Print a pre-flight memory estimate and refuse to start a run that would not fit (false: warn only).",
    )
    distributed: str = _f(
        "auto",
        "Several processes: ddp (each holds the whole model), fsdp (FSDP2: weights, gradients and optimizer "
        "state sharded over the processes) or auto (ddp when the memory estimate fits one process, else fsdp).",
        choices=("auto", "ddp", "fsdp"),
    )
    gradient_checkpointing: bool = _f(
        False, "Recompute each block's activations in backward (less memory for long sequences, ~1/3 slower)."
    )
    liger: bool = _f(
        False, "Liger's Triton kernels in the model's blocks (CUDA, `pip install liger-kernel`)."
    )
    report_to: list[str] = _f(
        [],
        "Experiment trackers that also receive the config, metrics and final evaluation: any of tensorboard, "
        "mlflow, trackio, wandb (metrics.jsonl stays the record; each is an extra: pip install 'tuneforge[mlflow]').",
    )


@dataclass
class EvalConfig:
    batch_size: int = _f(64, "Batch size for evaluation.", ge=1)
    baseline: bool = _f(
        True, "Also evaluate a reference (majority class or base model) beside the tuned model."
    )
    report: bool = _f(True, "Write report.md and report.html in the run folder at the end of training.")
    bootstrap_samples: int = _f(
        1000,
        "Bootstrap resamples for the report's 95% confidence intervals.",
        ge=100,
        why="for a stable 95% interval",
    )
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
        gt=0,
        why="a fraction: 0.1 = 10%",
    )
    forgetting_max_texts: int = _f(
        200, "Use at most this many paragraphs/rows of the reference text (and of forgetting_data).", ge=1
    )
    bias: bool = _f(
        True, "Run the bias probe: swap demographic terms in held-out inputs and measure how the model moves."
    )
    bias_terms: str | None = _f(
        None, "A JSON/YAML file of extra term groups for the bias probe (shape of resources/bias_terms.json)."
    )
    bias_max_examples: int = _f(200, "Probe at most this many held-out inputs per term category.", ge=1)
    explain: int = _f(
        10,
        "Classifiers: explain this many test errors (a random sample) and every bias-probe flip (up to 50) with "
        "integrated gradients in the report (explanations.json; needs the explain extra); 0 switches it off.",
        ge=0,
    )
    generation_metrics: str | bool = _f(
        "auto",
        "Text-producing tasks (sft, seq2seq): answer test prompts with the base and the tuned model and score "
        "the answers (exact match and per-label F1 for short labels, else ROUGE and chrF): auto (up to "
        "eval.max_generate prompts), true (every test prompt) or false.",
        choices=("auto",),
    )
    max_generate: int = _f(
        64, "Test prompts answered for the generation metrics when eval.generation_metrics is auto.", ge=1
    )
    baselines: str | list[str] = _f(
        "auto",
        "Scores without fine-tuning written to baselines.json and shown in the report (was fine-tuning needed?): "
        "auto (the task's cheap baselines: zero_shot/k_shot with a causal LM, knn/logreg with an encoder, "
        "logprob_margin/length/bt_probe for preference pairs), none, or a list of those names.",
        choices=("auto", "none"),
    )
    few_shot_k: int = _f(
        5, "Labelled examples in the k-shot baselines' prompts (stratified over labels).", ge=1
    )
    zero_shot_prompt: str = _f(
        ZERO_SHOT_PROMPT,
        "Prompt for the zero-/k-shot classification baselines: {text} is the input, {labels} the label names; "
        "each label is scored as the continuation ' LABEL'.",
    )
    baseline_examples: int = _f(
        500, "Score the baselines on at most this many held-out examples (a seeded sample).", ge=1
    )


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
        5, "Held-out prompts answered by the base and the tuned model after training (samples.jsonl).", ge=0
    )
    max_new_tokens: int = _f(
        64, "Longest answer, in tokens, for sample generations, chat and generate.", ge=1
    )
    temperature: float = _f(0.0, "Sampling temperature for generation; 0 is greedy (deterministic).", ge=0)
    fast_loss: bool = _f(
        True,
        "Apply the output layer only where loss is taken (same loss, less time and memory); false uses full logits.",
    )


@dataclass
class PreferenceConfig:
    loss_type: str = _f(
        "sigmoid",
        "dpo: sigmoid (DPO), ipo, hinge, orpo (no reference model) or kto (unpaired good/bad rows; pairs are split into them).",
        choices=PREFERENCE_LOSSES,
    )
    beta: float = _f(
        0.1,
        "dpo: how far the policy may move from the reference (DPO/IPO/hinge/KTO beta); orpo: weight of the odds-ratio term.",
        gt=0,
    )
    label_smoothing: float = _f(
        0.0,
        "dpo sigmoid: assumed fraction of wrongly ordered pairs (conservative DPO), in [0, 0.5).",
        ge=0,
        lt=0.5,
    )
    desirable_weight: float = _f(1.0, "kto: loss weight of desirable (label true) rows.", gt=0)
    undesirable_weight: float = _f(1.0, "kto: loss weight of undesirable (label false) rows.", gt=0)
    packing: bool = _f(
        True,
        "dpo: pack a batch's chosen and rejected sequences into fewer rows when that computes less than padding "
        "them (each still sees only itself; same loss); false pads every row to the longest.",
    )
    share_prompts: bool = _f(
        True,
        "dpo, paired losses (all but kto): compute each pair's prompt once, its chosen and rejected answers "
        "after one copy of it, each seeing the prompt and itself only (the same log-probs and gradients as two "
        "rows); false computes the prompt in both rows.",
    )
    center_rewards: float | None = _f(
        None,
        "reward: weight of a (r_chosen + r_rejected)^2 penalty that keeps rewards near 0; null: none.",
        ge=0,
        why="a non-negative weight; null adds no penalty",
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
    group_size: int = _f(
        4,
        "Completions sampled per prompt; each is scored against the others of its group.",
        ge=2,
        why="advantages compare completions of one prompt",
    )
    max_new_tokens: int = _f(32, "Longest sampled completion, in tokens.", ge=1)
    temperature: float = _f(
        1.0, "Sampling temperature for the completions (must be > 0).", gt=0, why="GRPO samples"
    )
    top_p: float = _f(
        1.0, "Nucleus sampling: keep the smallest set of tokens with this total probability.", gt=0, le=1
    )
    kl_beta: float = _f(
        0.0,
        "Weight of the KL penalty to the reference model (the base, or the adapter switched off). "
        "0.0 as TRL: no reference model needed; set 0.04 for the original GRPO penalty.",
        ge=0,
    )
    loss_aggregation: str = _f(
        "dapo",
        "How per-token losses are averaged: grpo (per-sequence mean, then mean; length-biased), bnpo (over "
        "the tokens of the micro-batch), dr_grpo (sum / (completions x max_new_tokens)) or dapo (over the "
        "tokens of the whole optimizer step; the default, as TRL 1.16).",
        choices=GRPO_LOSS_AGGREGATIONS,
    )
    scale_rewards: bool = _f(
        True, "Divide each group's advantages by its reward std (false: only subtract the group mean)."
    )
    eval_prompts: int = _f(
        32, "Held-out prompts answered (greedy) to measure the mean reward at each evaluation.", ge=0
    )
    share_prompts: bool = _f(
        True,
        "Compute each prompt once for its group's completions in the update and reference passes (one "
        "sequence per group, each completion masked from the others; the same log-probs, about half the "
        "tokens; long completions are split over a few rows where a row's attention would cost more); false "
        "runs every completion's whole sequence.",
    )
    sampler: str = _f(
        "auto",
        "What rollouts sample from: `policy` (the training model as it is), `merged` (a copy with LoRA folded "
        "into the weights, in the policy's precision), `merged-bf16` (that copy in bf16), or `auto` "
        "(merged-bf16 where the device multiplies bf16 natively, else merged; the policy where no copy can be "
        "made: DoRA, IA3, prompt learning, FSDP). The loss always recomputes log-probs with the policy.",
        choices=("auto", "policy", "merged", "merged-bf16"),
    )


@dataclass
class Seq2SeqConfig:
    source_column: str = _f("source", "Column with the input text (rows without messages).")
    target_column: str = _f("target", "Column with the output text the model learns to write.")
    source_prefix: str = _f("", "Text put before every source, e.g. 'summarize: ' for T5.")
    max_target_length: int = _f(
        64, "Maximum target tokens; longer targets are truncated (data.max_length caps the source).", ge=1
    )
    max_new_tokens: int = _f(64, "Longest generated output, in tokens.", ge=1)
    num_beams: int = _f(1, "Beam search width for generation (1: greedy).", ge=1)
    samples: int = _f(5, "Test sources shown with base and tuned outputs in eval.json and the report.", ge=0)


@dataclass
class ContinualConfig:
    replay: float = _f(
        0.0,
        "With model.from_run: mix this fraction of the previous run's training rows (a seeded sample) into the "
        "training data, so every epoch revisits the old task.",
        ge=0,
        le=1,
    )
    l2_to_previous: float = _f(
        0.0,
        "With model.from_run: strength of an L2 pull toward the previous weights (L2-SP); 0 is off.",
        ge=0,
    )
    ewc: float = _f(
        0.0,
        "With model.from_run: strength of elastic weight consolidation (Fisher-weighted pull toward the "
        "previous weights, Fisher estimated on the previous training data); 0 is off.",
        ge=0,
    )
    ewc_samples: int = _f(200, "Previous training rows used to estimate the EWC Fisher diagonal.", ge=1)
    adapter: str = _f(
        "continue",
        "With model.from_run on an adapter run: continue (train the same adapter on) or merge (fold it into "
        "the base and train a new adapter on the merged model).",
        choices=("continue", "merge"),
    )
    forgetting_threshold: float = _f(
        0.05,
        "Warn when the previous run's test score falls by more than this fraction of its value after the update.",
        gt=0,
        why="a fraction: 0.05 = 5%",
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
    "continual": ContinualConfig,
    "seq2seq": Seq2SeqConfig,
}


@dataclass
class RunConfig:
    task: str = _f("classification", "classification, sft, seq2seq, reward, dpo or grpo.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    seq2seq: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


# ---------------------------------------------------------------- names from other tools
# Keys users bring from the transformers Trainer, TRL, PEFT, Axolotl and torchtune, checked before the
# spelling-based suggestion: `learning_rate` means `training.lr`, not `early_stopping_patience`.
# A key is looked up as `section.key` first, then bare.
ALIASES = {
    "learning_rate": "training.lr",
    "num_train_epochs": "training.epochs",
    "num_epochs": "training.epochs",
    "n_epochs": "training.epochs",
    "per_device_train_batch_size": "training.batch_size",
    "train_batch_size": "training.batch_size",
    "micro_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "gradient_accumulation": "training.grad_accum",
    "warmup": "training.warmup_ratio",
    "lr_scheduler_type": "training.scheduler",
    "lr_scheduler": "training.scheduler",
    "logging_steps": "training.log_every",
    "eval_steps": "training.eval_every",
    "save_steps": "training.save_every",
    "save_total_limit": "training.keep_checkpoints",
    "clip_grad_norm": "training.max_grad_norm",
    "gradient_clipping": "training.max_grad_norm",
    "early_stopping": "training.early_stopping_patience",
    "mixed_precision": "training.precision",
    "bf16": "training.precision",
    "fp16": "training.precision",
    "torch_compile": "training.compile",
    "num_threads": "training.threads",
    "per_device_eval_batch_size": "eval.batch_size",
    "eval_batch_size": "eval.batch_size",
    "lora_r": "method.r",
    "rank": "method.r",
    "lora_alpha": "method.alpha",
    "lora_target_modules": "method.target_modules",
    "peft": "method.name",
    "adapter": "method.name",
    "max_seq_length": "data.max_length",
    "max_seq_len": "data.max_length",
    "sequence_len": "data.max_length",
    "cutoff_len": "data.max_length",
    "dataset": "data.train",
    "train_file": "data.train",
    "base_model": "model.name",
    "model_name_or_path": "model.name",
    "output_dir": "output.dir",
    "num_generations": "grpo.group_size",
    "max_completion_length": "grpo.max_new_tokens",
    "grpo.beta": "grpo.kl_beta",
    "grpo.loss_type": "grpo.loss_aggregation",
    "lora": "method",
    "optimizer": "training",
    "evaluation": "eval",
}


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    """A ' Did you mean ...?' for a misspelt choice, or nothing."""
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _suggest_key(key: str, section: str | None) -> str:
    """A suggestion for an unknown key in ``section`` (None: the top level): another tool's name for one of
    ours, the same name in another section, or the closest spelling."""
    target = ALIASES.get(f"{section}.{key}") or ALIASES.get(key)
    if target is None:
        elsewhere = [f"{s}.{key}" for s, cls in SECTIONS.items() if s != section and key in _names(cls)]
        target = elsewhere[0] if elsewhere else None
    if target is not None:
        if section is not None and target.startswith(f"{section}."):
            target = target[len(section) + 1 :]
        return f" Did you mean '{target}'?"
    options = _names(SECTIONS[section]) if section else _names(RunConfig)
    return _suggest(key, options)


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# ---------------------------------------------------------------- YAML
class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            seen[key] = line
        return super().construct_mapping(node, deep)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


# ---------------------------------------------------------------- types
_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "None": type(None)}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML value against a field annotation (str, int, float, bool, None, list[...]) and return
    it converted (ints to float for float fields, list items to their type)."""
    # annotations are strings here (postponed evaluation): "int | str | None"
    options = [a.strip() for a in str(annotation).split("|")]
    ok_types = [_TYPES.get(opt, list) for opt in options]
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
            return float(value)  # PyYAML reads 1e-4 (no dot) as text
        except ValueError:
            pass
    elif isinstance(value, list) and list in ok_types:
        if "list[float]" in str(annotation):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{where}: expected a list of numbers, got {value!r}.")
            return [float(v) for v in value]
        return [str(v) for v in value]
    if isinstance(value, str) and bool in ok_types and str not in ok_types:
        raise ConfigError(f"{where}: expected true or false, got the text {value!r}; write true or false.")
    names = " or ".join(t.__name__ if t is not type(None) else "null" for t in ok_types)
    raise ConfigError(f"{where}: expected {names}, got {value!r} ({type(value).__name__}).")


# ---------------------------------------------------------------- rules
Rule = Callable[[RunConfig], None]
RULES: list[Rule] = []
TASK_CHECK: list[Rule] = []


def rule(fn: Rule) -> Rule:
    """Register ``fn`` as a generic rule; ``validate`` runs the rules in the order they are defined."""
    RULES.append(fn)
    return fn


def register_task_check(fn: Rule) -> Rule:
    """Register a check that ``validate`` runs after the generic rules (the tasks package registers the one
    that knows task names, metrics, and which methods and sections each task accepts). Idempotent."""
    if fn not in TASK_CHECK:
        TASK_CHECK.append(fn)
    return fn


def validate(cfg: RunConfig) -> None:
    """Run every generic rule, then every registered task check; the first broken one raises ConfigError."""
    for check in (*RULES, *TASK_CHECK):
        check(cfg)


def _fail(key: str | None, message: str) -> typing.NoReturn:
    """Raise ConfigError for ``key`` (kept on the error so a message can name the override that set it)."""
    err = ConfigError(message)
    err.key = key  # type: ignore[attr-defined]
    raise err


def _values(cfg: RunConfig) -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, value) for every field of every section."""
    for name, cls in SECTIONS.items():
        section = getattr(cfg, name)
        for f in dataclasses.fields(cls):
            yield f"{name}.{f.name}", f, getattr(section, f.name)


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _show(value: Any) -> str:
    """A value as YAML writes it (null, true, 5e-05)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@rule
def sections_are_section_objects(cfg: RunConfig) -> None:
    """Each section is its dataclass (a config built in Python with a plain dict is refused)."""
    for name, cls in SECTIONS.items():
        if not isinstance(getattr(cfg, name), cls):
            _fail(name, f"{name} must be a {cls.__name__}; build configs from dicts with from_dict().")


@rule
def task_is_named(cfg: RunConfig) -> None:
    """task is a non-empty string (the registered task check says which names exist)."""
    if not isinstance(cfg.task, str) or not cfg.task.strip():
        _fail("task", f"task must name a task, e.g. task: classification; got {cfg.task!r}.")


@rule
def values_have_their_types(cfg: RunConfig) -> None:
    """Every value has its field's type (from_dict checked it already; a config built in Python had not)."""
    for key, f, value in _values(cfg):
        try:
            coerced = _coerce(value, f.type, key)
        except ConfigError as e:
            _fail(key, str(e))
        if isinstance(value, str) and not isinstance(coerced, str):  # text where a number belongs
            _fail(key, f"{key}: expected a number, got the text {value!r}.")


@rule
def numbers_are_finite(cfg: RunConfig) -> None:
    """Every number is finite: NaN and infinity are refused wherever a number goes."""
    for key, f, value in _values(cfg):
        if isinstance(value, list) and any(_is_number(v) and not math.isfinite(v) for v in value):
            _fail(key, f"{key} must hold finite numbers, got {value}.")
        if _is_number(value) and not math.isfinite(value):
            _fail(
                key,
                f"{key} must be a finite number, got {value}; write a number such as the default "
                f"{_show(_default(f))}.",
            )


@rule
def texts_are_among_choices(cfg: RunConfig) -> None:
    """A text value of a field with choices is one of them (numbers in such fields are checked by range)."""
    for key, f, value in _values(cfg):
        choices = f.metadata.get("choices")
        if choices and isinstance(value, str) and value not in choices:
            options = [*choices, *(["a number"] if "ge" in f.metadata or "gt" in f.metadata else [])]
            listed = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
            _fail(key, f"{key} '{value}' is unknown.{_suggest(value, choices)} Choose {listed}.")


@rule
def numbers_are_in_range(cfg: RunConfig) -> None:
    """A number lies in its field's range (ge/gt/le/lt in the field's metadata)."""
    for key, f, value in _values(cfg):
        m = f.metadata
        if not _is_number(value):
            continue
        low_ok = value >= m["ge"] if "ge" in m else value > m["gt"] if "gt" in m else True
        high_ok = value <= m["le"] if "le" in m else value < m["lt"] if "lt" in m else True
        if low_ok and high_ok:
            continue
        why = f" ({m['why']})" if "why" in m else ""
        _fail(key, f"{key} must be {_range_text(m)}{why}, got {value}; the default is {_show(_default(f))}.")


def _range_text(m: typing.Mapping[str, Any]) -> str:
    """'at least 1', 'positive', 'in [0, 0.5)' from a field's bounds."""
    low = m.get("ge", m.get("gt"))
    high = m.get("le", m.get("lt"))
    if low is not None and high is not None:
        return f"in {'[' if 'ge' in m else '('}{low}, {high}{']' if 'le' in m else ')'}"
    if "ge" in m:
        return f"at least {m['ge']}"
    if "gt" in m:
        return "positive" if m["gt"] == 0 else f"greater than {m['gt']}"
    return f"at most {m['le']}" if "le" in m else f"below {m['lt']}"


@rule
def epochs_positive_without_max_steps(cfg: RunConfig) -> None:
    """training.epochs is positive unless training.max_steps sets the length instead."""
    t = cfg.training
    if t.epochs <= 0 and t.max_steps is None:
        _fail(
            "training.epochs",
            f"training.epochs must be positive (or set training.max_steps), got {t.epochs}.",
        )


@rule
def one_warmup_setting(cfg: RunConfig) -> None:
    """training.warmup_steps and training.warmup_ratio are not both set."""
    if cfg.training.warmup_steps is not None and cfg.training.warmup_ratio is not None:
        _fail(
            "training.warmup_steps",
            "training.warmup_steps and training.warmup_ratio are both set: keep one of them.",
        )


@rule
def freeze_layers_needs_freeze(cfg: RunConfig) -> None:
    """method.freeze_layers is set only with method freeze."""
    m = cfg.method
    if m.freeze_layers is not None and m.name != "freeze":
        _fail(
            "method.freeze_layers",
            f"method.freeze_layers is only used by method 'freeze' (method.name is '{m.name}'): remove it.",
        )


@rule
def bottleneck_options_need_bottleneck(cfg: RunConfig) -> None:
    """method.reduction_factor and method.non_linearity are changed only with method houlsby or pfeiffer."""
    m = cfg.method
    for key, default in (("reduction_factor", 16), ("non_linearity", "relu")):
        if getattr(m, key) != default and m.name not in ("houlsby", "pfeiffer"):
            _fail(f"method.{key}", f"method.{key} is used by houlsby/pfeiffer adapters only: remove it.")


@rule
def layer_lr_decay_needs_full_or_unfreeze(cfg: RunConfig) -> None:
    """method.layer_lr_decay differs from 1.0 only with method full or unfreeze."""
    m = cfg.method
    if m.layer_lr_decay != 1.0 and m.name not in ("full", "unfreeze"):
        _fail(
            "method.layer_lr_decay",
            "method.layer_lr_decay applies to 'full' and 'unfreeze' only: remove it or change method.name.",
        )


@rule
def packing_without_virtual_tokens(cfg: RunConfig) -> None:
    """sft.packing is not combined with prefix or prompt tuning (packed examples would share virtual tokens)."""
    m = cfg.method
    if cfg.sft.packing and m.name in VIRTUAL_TOKEN_METHODS:
        _fail(
            "sft.packing",
            f"sft.packing does not work with method '{m.name}' (its virtual tokens would be shared by every "
            f"packed example): set sft.packing=false or use lora/dora/ia3/full.",
        )


@rule
def early_stopping_needs_validation(cfg: RunConfig) -> None:
    """training.early_stopping_patience needs validation data (a file or a held-out fraction)."""
    d = cfg.data
    if (
        cfg.training.early_stopping_patience is not None
        and d.validation is None
        and d.validation_fraction == 0
    ):
        _fail(
            "training.early_stopping_patience",
            "early stopping needs validation data: set data.validation or data.validation_fraction > 0.",
        )


@rule
def label_smoothing_needs_sigmoid(cfg: RunConfig) -> None:
    """preference.label_smoothing is set only with loss_type sigmoid."""
    p = cfg.preference
    if p.label_smoothing and p.loss_type != "sigmoid":
        _fail(
            "preference.label_smoothing",
            f"preference.label_smoothing applies to loss_type sigmoid only (loss_type is '{p.loss_type}'): "
            "remove it.",
        )


@rule
def kto_weights_need_kto(cfg: RunConfig) -> None:
    """preference.desirable_weight/undesirable_weight differ from 1.0 only with loss_type kto."""
    p = cfg.preference
    if (p.desirable_weight, p.undesirable_weight) != (1.0, 1.0) and p.loss_type != "kto":
        _fail(
            "preference.desirable_weight",
            "preference.desirable_weight/undesirable_weight apply to loss_type kto only: remove them or set "
            "preference.loss_type=kto.",
        )


@rule
def rewards_not_empty(cfg: RunConfig) -> None:
    """grpo.rewards names at least one reward function."""
    if not cfg.grpo.rewards:
        _fail(
            "grpo.rewards",
            "grpo.rewards is empty: name at least one reward function, e.g. [ends_with_period].",
        )


@rule
def one_weight_per_reward(cfg: RunConfig) -> None:
    """grpo.reward_weights, when set, has one weight per reward function."""
    g = cfg.grpo
    if g.reward_weights is not None and len(g.reward_weights) != len(g.rewards):
        _fail(
            "grpo.reward_weights",
            f"grpo.reward_weights has {len(g.reward_weights)} weights for {len(g.rewards)} reward functions: "
            f"give one per function, in order.",
        )


@rule
def forgetting_options_need_forgetting(cfg: RunConfig) -> None:
    """eval.forgetting_text/forgetting_data are set only when eval.forgetting is on."""
    e = cfg.eval
    if not e.forgetting and (e.forgetting_text != "builtin" or e.forgetting_data is not None):
        _fail(
            "eval.forgetting",
            "eval.forgetting_text/forgetting_data are set but eval.forgetting is false: remove them "
            "or set eval.forgetting=true.",
        )


@rule
def report_to_known_trackers(cfg: RunConfig) -> None:
    """training.report_to names known trackers, each once (whether it is installed is checked at run start)."""
    known = ("tensorboard", "mlflow", "trackio", "wandb")
    for name in cfg.training.report_to:
        if name not in known:
            _fail(
                "training.report_to",
                f"training.report_to: '{name}' is not a tracker tuneforge reports to.{_suggest(name, known)} "
                f"Choose among {', '.join(known)} (each is an extra: pip install 'tuneforge[NAME]').",
            )
    if len(set(cfg.training.report_to)) < len(cfg.training.report_to):
        _fail("training.report_to", "training.report_to names a tracker twice: list each once.")


@rule
def bias_terms_need_bias(cfg: RunConfig) -> None:
    """eval.bias_terms is set only when eval.bias is on."""
    if not cfg.eval.bias and cfg.eval.bias_terms is not None:
        _fail("eval.bias", "eval.bias_terms is set but eval.bias is false: remove it or set eval.bias=true.")


BASELINES = ("zero_shot", "k_shot", "knn", "logreg", "logprob_margin", "length", "bt_probe")


@rule
def known_baselines(cfg: RunConfig) -> None:
    """eval.baselines is auto, none, or a list of known baseline names."""
    b = cfg.eval.baselines
    unknown = [x for x in b if x not in BASELINES] if isinstance(b, list) else []
    if unknown:
        _fail(
            "eval.baselines",
            f"eval.baselines: unknown baseline(s) {', '.join(unknown)}; choose auto, none, or a list of "
            f"{', '.join(BASELINES)}.",
        )


@rule
def continual_needs_from_run(cfg: RunConfig) -> None:
    """continual.* options are set only with model.from_run (they guard the previous run's task)."""
    c, default = cfg.continual, ContinualConfig()
    changed = [f.name for f in dataclasses.fields(c) if getattr(c, f.name) != getattr(default, f.name)]
    if changed and not cfg.model.from_run:
        _fail(
            f"continual.{changed[0]}",
            f"{', '.join('continual.' + k for k in changed)} set without model.from_run: they update a previous "
            f"run. Add --from RUN_DIR (or model.from_run: RUN_DIR), or remove them.",
        )


@rule
def counterfactual_terms_need_augmentation(cfg: RunConfig) -> None:
    """data.counterfactual_terms is set only with data.counterfactual_augmentation."""
    if cfg.data.counterfactual_terms is not None and not cfg.data.counterfactual_augmentation:
        _fail(
            "data.counterfactual_terms",
            "data.counterfactual_terms is set but data.counterfactual_augmentation is false: remove it or set "
            "data.counterfactual_augmentation=true.",
        )


# ---------------------------------------------------------------- loading
def _top_level_error(source: str, raw: Any) -> ConfigError:
    kind = "a list ('- ...' lines)" if isinstance(raw, list) else f"{type(raw).__name__} {raw!r}"
    return ConfigError(
        f"{source}: the top level must be a mapping of sections (task:, model:, data:, training:, ...), "
        f"got {kind}. Write e.g. 'task: sft' and 'data:' with 'train: FILE' below it."
    )


def _build(section: str, raw: Any, source: str) -> Any:
    """One section's dataclass from its raw mapping; unknown keys and wrong types fail here."""
    cls, where = SECTIONS[section], f"{source}: {section}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key '{key}'.{_suggest_key(str(key), section)} Valid keys: {', '.join(fields)}."
            )
        kwargs[key] = _coerce(value, fields[key].type, f"{where}.{key}")
    return cls(**kwargs)


def from_dict(raw: dict[str, Any] | None, source: str = "config") -> RunConfig:
    """Build and validate a RunConfig from a nested dict (as read from YAML); None gives the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _top_level_error(source, raw)
    top = _names(RunConfig)
    for key in raw:
        if key not in top:
            raise ConfigError(
                f"{source}: unknown section '{key}'.{_suggest_key(str(key), None)} Sections: {', '.join(top)}."
            )
    kwargs: dict[str, Any] = {}
    for name in SECTIONS:
        section = raw.get(name)
        kwargs[name] = _build(name, {} if section is None else section, source)
    if "task" in raw:
        kwargs["task"] = raw["task"]
    try:
        return RunConfig(**kwargs)
    except ConfigError as e:
        err = ConfigError(f"{source}: {e}")
        err.key, err.bare = getattr(e, "key", None), str(e)  # type: ignore[attr-defined]
        raise err from None


def _override_key(item: str) -> list[str]:
    """The dotted key of a ``key=value`` override, checked against the schema."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': write it as section.key=value, e.g. training.lr=1e-4.")
    parts = item.split("=", 1)[0].strip().split(".")
    top = _names(RunConfig)
    if parts[0] not in top:
        raise ConfigError(
            f"override '{item}': unknown section '{parts[0]}'.{_suggest_key(parts[0], None)} "
            f"Sections: {', '.join(top)}."
        )
    if len(parts) > 1 and parts[0] not in SECTIONS:
        raise ConfigError(f"override '{item}': '{parts[0]}' is not a section; write {parts[0]}=VALUE.")
    if len(parts) > 2:
        raise ConfigError(f"override '{item}': keys have two parts, section.key (e.g. training.lr=1e-4).")
    if len(parts) == 2 and parts[1] not in _names(SECTIONS[parts[0]]):
        fields = _names(SECTIONS[parts[0]])
        raise ConfigError(
            f"override '{item}': unknown key '{parts[1]}' in {parts[0]}.{_suggest_key(parts[1], parts[0])} "
            f"Valid keys: {', '.join(fields)}."
        )
    return parts


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "config") -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) to a raw config dict, checking each key
    and value type at once so an error names the override."""
    if not isinstance(raw, dict):
        raise _top_level_error(source, raw)
    for item in overrides:
        parts = _override_key(item)
        text = item.split("=", 1)[1]
        try:
            value = _yaml_load(text) if text != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({e}).") from None
        if len(parts) == 1:
            raw[parts[0]] = value
            continue
        section, key = parts
        node = raw.get(section)
        if node is None:
            node = raw[section] = {}
        if not isinstance(node, dict):
            raise ConfigError(
                f"override '{item}': {source} has '{section}: {node!r}', not a mapping of keys; fix that first."
            )
        field_type = {f.name: f.type for f in dataclasses.fields(SECTIONS[section])}[key]
        _coerce(value, field_type, f"override '{item}': {section}.{key}")
        node[key] = value
    return raw


def _read_yaml(p: Path) -> Any:
    """The YAML document in file ``p``, with errors that name the file and line."""
    if p.is_dir():
        raise ConfigError(
            f"{p} is a folder, not a config file; give a YAML file such as configs/classify-minilm-lora.yaml."
        )
    if not p.exists():
        raise ConfigError(f"config file {p} not found. Example configs live in configs/.")
    if not p.is_file():
        raise ConfigError(f"{p} is not a regular file (a pipe or device?); give a YAML file.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a UTF-8 text file; give a YAML config file.") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror}).") from None
    try:
        raw = _yaml_load(text)
    except _DuplicateKey as e:
        raise ConfigError(
            f"{p} line {e.line}: key '{e.key}' is given twice in the same mapping (first on line {e.first}); "
            "keep one of them."
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)}).") from None
    if raw is None:
        raise ConfigError(
            f"{p} is empty; write at least task: and data.train, or omit the file to use the defaults."
        )
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config (or the defaults when ``path`` is None) and apply overrides."""
    raw: Any = {}
    source = "defaults"
    if path is not None:
        raw, source = _read_yaml(Path(path)), str(path)
    overrides = overrides or []
    raw = apply_overrides(raw, overrides, source)
    try:
        return from_dict(raw, source)
    except ConfigError as e:
        given = {item.split("=", 1)[0].strip(): item for item in overrides}
        key = getattr(e, "key", None)
        if key in given:
            raise ConfigError(f"override '{given[key]}': {e.bare}") from None  # type: ignore[attr-defined]
        raise


# ---------------------------------------------------------------- resume
# What may change when a run resumes: how long it trains and how often it evaluates, saves and logs.
RESUMABLE_KEYS = (
    "training.max_steps",
    "training.epochs",
    "training.eval_every",
    "training.save_every",
    "training.log_every",
    "training.report_to",
    "training.keep_checkpoints",
    "training.early_stopping_patience",
    "eval.report",
)


def _flat(cfg: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """{dotted key: value}; a dict is read over the defaults (missing keys are default values)."""
    if isinstance(cfg, RunConfig):
        raw = cfg.to_dict()
    else:
        raw = {"task": RunConfig.__dataclass_fields__["task"].default}
        raw.update({name: dataclasses.asdict(cls()) for name, cls in SECTIONS.items()})
        for key, value in cfg.items():
            if key in SECTIONS and isinstance(value, dict):
                raw[key].update(value)
            elif not (key in SECTIONS and value is None):
                raw[key] = value
    flat = {}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def config_changes(
    old: RunConfig | dict[str, Any], new: RunConfig | dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every key whose value differs, sorted by key."""
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume_changes(
    saved: RunConfig | dict[str, Any],
    requested: RunConfig | dict[str, Any],
    resolved_keys: typing.Collection[str] = (),
) -> None:
    """Refuse a resume whose config changes anything but ``RESUMABLE_KEYS``.

    ``saved`` is the run folder's resolved config; ``resolved_keys`` are the keys whose saved value was
    resolved from ``auto`` (e.g. training.precision: bf16): requesting ``auto`` again there is no change.
    """
    refused = [
        (key, old, new)
        for key, old, new in config_changes(saved, requested)
        if key not in RESUMABLE_KEYS and not (key in resolved_keys and new == "auto")
    ]
    if refused:
        lines = "\n".join(f"  {key}: {_show(old)} -> {_show(new)}" for key, old, new in refused)
        raise ConfigError(
            f"--resume with a changed config:\n{lines}\nresume keeps the run's config; only these keys may "
            f"change: {', '.join(RESUMABLE_KEYS)}; start a new run (another output.name) to change the others."
        )


# ---------------------------------------------------------------- reference
def describe() -> str:
    """The configuration reference (Markdown), generated from the schema."""
    lines = ["| key | default | description |", "|---|---|---|"]
    for f in dataclasses.fields(RunConfig):
        if f.name in SECTIONS:
            for sf in dataclasses.fields(SECTIONS[f.name]):
                shown = str(_default(sf)).replace("\n", "\\n")  # one table row per key
                lines.append(f"| `{f.name}.{sf.name}` | `{shown}` | {sf.metadata['help']} |")
        else:
            lines.append(f"| `{f.name}` | `{f.default}` | {f.metadata['help']} |")
    return "\n".join(lines)
