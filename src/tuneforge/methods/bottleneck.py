"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) as a PEFT method.

A bottleneck adapter is a small residual MLP, ``h + up(act(down(h)))`` with ``down``: hidden -> hidden / r and
``up``: hidden / r -> hidden, placed on the output of a transformer sublayer before its residual connection:

    houlsby   after the attention output projection and after the feed-forward output projection
    pfeiffer  after the feed-forward output projection only (half the adapters)

The up-projection starts at zero, so a fresh adapter is exactly the identity and training starts from the
base model. The adapter is non-linear, so it cannot be folded into the base weights (no merge).

PEFT has no bottleneck adapter; this module registers one with PEFT's registry (``register_peft_method``) when it
is imported, so the saved adapter is an ordinary PEFT folder (``adapter_config.json`` with
``"peft_type": "BOTTLENECK"``, ``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` loads. Importing
tuneforge arranges that this module is imported as soon as PEFT is (``tuneforge.methods.peft_registry``).

Python::

    import peft
    from tuneforge.methods.bottleneck import BottleneckConfig
    cfg = BottleneckConfig(task_type="SEQ_CLS", placement="houlsby", reduction_factor=16, modules_to_save=["classifier"])
    model = peft.get_peft_model(base_model, cfg)
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import register_peft_method
from peft.utils.peft_types import PeftType
from torch import nn
from transformers.activations import ACT2FN

from tuneforge.methods.common import Prepared, head_module_names, param_groups

PEFT_NAME = "bottleneck"  # the PEFT method name: PeftType.BOTTLENECK, weights under "bottleneck_*"
PLACEMENTS = ("houlsby", "pfeiffer")
NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")
NOT_MERGEABLE = (
    "a bottleneck adapter (houlsby/pfeiffer) is non-linear and cannot be merged into the base weights; "
    "keep it as an adapter on its base model"
)

# the output projection of each sublayer, relative to its transformer block: BERT/RoBERTa/MiniLM, Llama/Mistral/
# Qwen/Gemma/SmolLM, OPT/BART, T5, Phi, DistilBERT, Falcon/BLOOM, Mixtral-style feed-forward; with the
# cross-attention of encoder-decoders (BART, T5, a warm-started BERT decoder)
ATTENTION_OUT = (
    r"attention\.output\.dense",
    r"crossattention\.output\.dense",
    r"self_attn\.o_proj",
    r"self_attn\.out_proj",
    r"encoder_attn\.out_proj",
    r"self_attn\.dense",
    r"attention\.out_lin",
    r"self_attention\.dense",
    r"layer\.\d+\.SelfAttention\.o",
    r"layer\.\d+\.EncDecAttention\.o",
)
FEED_FORWARD_OUT = (
    r"output\.dense",
    r"layer\.\d+\.DenseReluDense\.wo",
    r"mlp\.down_proj",
    r"mlp\.fc2",
    r"fc2",
    r"ffn\.lin2",
    r"mlp\.dense_4h_to_h",
    r"feed_forward\.w2",
)


def sublayer_outputs(placement: str) -> tuple[str, ...]:
    """Regex alternatives of the output projections a placement adapts (relative to a block)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"bottleneck placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    return (ATTENTION_OUT if placement == "houlsby" else ()) + FEED_FORWARD_OUT


def target_regex(placement: str, blocks: list[str] | None = None) -> str:
    """A full-match regex of the module names to adapt: the placement's sublayer outputs in the block lists named
    ``blocks`` (e.g. ``["bert.encoder.layer"]``), or in any numbered block list when ``blocks`` is None."""
    where = "|".join(re.escape(b) for b in blocks) if blocks else r"(.*\.)?[A-Za-z_]+"
    return rf"({where})\.\d+\.({'|'.join(sublayer_outputs(placement))})"


def block_lists(model: nn.Module) -> list[str]:
    """Names of the model's transformer block lists: of the ModuleLists not nested in another (T5 keeps each
    block's sublayers in one), the longest, with any other as long (the encoder and decoder of an
    encoder-decoder), so a shorter vision tower or list of heads is left alone."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    outer = [(n, m) for n, m in lists if not any(n.startswith(o + ".") for o, _ in lists)]
    if not outer:
        raise ValueError(f"{type(model).__name__}: cannot find its transformer layers")
    longest = max(len(m) for _, m in outer)
    return [n for n, m in outer if len(m) == longest]


def _peft_type() -> PeftType:
    """``PeftType.BOTTLENECK``. ``register_peft_method`` accepts only names that are members of PEFT's enum (PEFT
    lists its own methods there), so the member is added first: a str member, equal to and hashed like its name,
    so the ``"peft_type": "BOTTLENECK"`` of a saved adapter finds the registered classes."""
    name = PEFT_NAME.upper()
    if name not in PeftType.__members__:
        member = str.__new__(PeftType, name)
        member._name_ = member._value_ = name
        member.__objclass__ = PeftType
        member._sort_order_ = len(PeftType._member_names_)
        type.__setattr__(PeftType, name, member)
        PeftType._member_names_.append(name)
        PeftType._member_map_[name] = member
        PeftType._value2member_map_[name] = member
    return PeftType[name]


@dataclass
class BottleneckConfig(PeftConfig):
    """A bottleneck adapter: ``h + up(act(down(h)))`` on the output of each targeted sublayer.

    Args:
        placement: ``houlsby`` (after attention and feed-forward) or ``pfeiffer`` (after feed-forward only).
        reduction_factor: hidden size / bottleneck size (16 gives 24 on a 384-wide model).
        non_linearity: the activation between the projections (relu, gelu, silu, tanh).
        target_modules: output Linear layers to adapt (names, suffixes or one full-match regex); None picks the
            placement's sublayers by their usual names.
        exclude_modules: names (or a regex) never to adapt.
        modules_to_save: other modules trained and saved with the adapter (a classifier's head).
    """

    placement: str = field(default="houlsby", metadata={"help": "houlsby or pfeiffer"})
    reduction_factor: int = field(default=16, metadata={"help": "hidden size / bottleneck size"})
    non_linearity: str = field(default="relu", metadata={"help": "relu, gelu, silu or tanh"})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "Linear layers to adapt"})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "never adapted"})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "trained and saved too"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = _peft_type()
        sublayer_outputs(self.placement)  # checks the name
        if self.reduction_factor < 1:
            raise ValueError(f"bottleneck reduction_factor must be >= 1, not {self.reduction_factor}")
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(
                f"bottleneck non_linearity must be one of {', '.join(NON_LINEARITIES)}, not {self.non_linearity!r}"
            )
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """A Linear output projection followed by its bottleneck adapters (one per adapter name, applied in turn)."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_act",)

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: BottleneckConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict()
        self.bottleneck_up = nn.ModuleDict()
        self.bottleneck_act: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        hidden = self.out_features
        width = max(1, hidden // config.reduction_factor)
        device = self.base_layer.weight.device
        down = nn.Linear(hidden, width, device=device)  # default (Kaiming-uniform) init
        up = nn.Linear(width, hidden, device=device)
        nn.init.zeros_(up.weight)  # the adapter starts as the identity
        nn.init.zeros_(up.bias)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_act[adapter_name] = config.non_linearity
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(NOT_MERGEABLE)

    def unmerge(self) -> None:
        pass  # never merged

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)  # (B, T, H)
        if self.disable_adapters:
            return out
        for name in self.active_adapters:
            if name not in self.bottleneck_down:
                continue
            down, up = self.bottleneck_down[name], self.bottleneck_up[name]
            h = down(out.to(down.weight.dtype))  # (B, T, H / r)
            delta = up(ACT2FN[self.bottleneck_act[name]](h))  # (B, T, H)
            out = out + delta.to(out.dtype)
        return out

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


class BottleneckModel(BaseTuner):
    """Wraps every targeted output projection of a model in a ``BottleneckLayer``."""

    prefix = PEFT_NAME + "_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict = {}

    def _prepare_adapter_config(self, peft_config: BottleneckConfig, model_config: dict) -> BottleneckConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = target_regex(peft_config.placement)
        return peft_config

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs
    ) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if not isinstance(target, nn.Linear):
            raise ValueError(
                f"bottleneck adapters wrap nn.Linear output projections; {current_key} is a "
                f"{type(target).__name__}. Name Linear layers in target_modules."
            )
        new = BottleneckLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)  # a further adapter does not train until it is made active
        self._replace_module(parent, target_name, new, target)

    def _check_merge_allowed(self):
        raise ValueError(NOT_MERGEABLE)


def register() -> None:
    """Register the method with PEFT (idempotent)."""
    peft_type = _peft_type()
    if peft_type not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(name=PEFT_NAME, config_cls=BottleneckConfig, model_cls=BottleneckModel)


register()


# ----------------------------------------------------------------------------------------------- tuneforge method
def bottleneck_config(model: nn.Module, m, head: bool) -> BottleneckConfig:
    """The PEFT config of tuneforge's ``method`` section ``m`` (name houlsby or pfeiffer) for ``model``."""
    from tuneforge.methods.peft_methods import saved_modules

    heads = head_module_names(model) if head else []
    if (
        m.target_modules == "all-linear"
    ):  # the default: the placement's sublayers inside the transformer blocks
        blocks = block_lists(model)
        targets = target_regex(m.name, blocks)
        if not any(re.fullmatch(targets, name) for name, _ in model.named_modules()):
            raise ValueError(
                f"method {m.name}: no attention or feed-forward output projection found in the blocks of "
                f"{type(model).__name__} ({', '.join(blocks)}). Set method.target_modules to the names of the Linear "
                f"layers that end each sublayer (e.g. [o_proj, down_proj])."
            )
    else:
        targets = m.target_modules
    seq2seq = getattr(
        getattr(model, "config", None), "is_encoder_decoder", False
    )  # T5, BART, EncoderDecoderModel
    return BottleneckConfig(
        task_type="SEQ_CLS" if head else "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        placement=m.name,
        reduction_factor=m.reduction_factor,
        non_linearity=m.non_linearity,
        target_modules=targets,
        modules_to_save=saved_modules(model, heads) or None,
    )


def prepare_bottleneck(model: nn.Module, m, t, head: bool) -> Prepared:
    """``method.name: houlsby | pfeiffer``: the base is frozen; the adapters (and a classifier's head) train."""
    import peft

    config = bottleneck_config(model, m, head)
    model = peft.get_peft_model(model, config)
    return Prepared(
        model, param_groups(model, t.lr, t.weight_decay, t.head_lr), info={"peft": config.peft_type.value}
    )


BASE_FOLDER = "base"  # where an export puts the base model beside the adapter


def export_with_base(model, tokenizer, adapter_dir: Path, out: Path) -> Path:
    """Export for ``--merge`` of a bottleneck adapter, which cannot be merged: ``out`` is the PEFT adapter folder
    (a copy of ``adapter_dir``) and ``out/base`` the base model it goes on, with the tokenizer; the adapter's
    ``base_model_name_or_path`` names that folder, so ``AutoPeftModel*.from_pretrained(out)`` loads both.
    ``model``: the loaded PeftModel (its adapters are removed here)."""
    from tuneforge.models.save import save_model_folder

    shutil.copytree(adapter_dir, out)
    base = model.unload()  # the base with the trained copies of modules_to_save (a classifier's head)
    save_model_folder(base, tokenizer, out / BASE_FOLDER, generation_config=True)
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str((out / BASE_FOLDER).resolve())
    config_file.write_text(json.dumps(config, indent=2))
    return out
