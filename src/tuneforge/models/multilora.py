"""Several LoRA adapters on one base model, chosen per row of a batch.

Every linear layer an adapter targets is wrapped in a :class:`MultiLoRALinear`: the base matmul runs once for
the whole batch, then each row adds its own adapter's low-rank delta, ``x A_i B_i * scale_i``. The A and B
matrices of every loaded adapter sit in slots; a mixed batch multiplies by all used slots' A at once
(``(in, used * r)``, a plain matmul), zeroes the rank columns of other slots per row, and multiplies by the
stacked B: two plain matmuls and a mask, cheaper on a CPU than gathering per-row matrices for batched matmuls
(measured: 0.88x vs 0.84x of the base's speed with 4 adapters on 16 rows). A batch on one adapter uses it
directly; a batch on the base skips the delta. Slot 0 is the base model (zeros). Adapters of different ranks
share the slots, zero-padded to the largest rank (exact).

:class:`MultiLoRA` owns the wrappers and the slots: ``load(path)`` reads a PEFT LoRA adapter folder into a slot
(least recently used adapters are evicted when the slots are full, never one in use), ``set_rows`` says which
slot each row of the next forward pass uses. Adapters it cannot apply per row (DoRA, IA3, prompt learning,
an embedding or lm_head LoRA, ``modules_to_save``) are refused with :class:`UnsupportedAdapter`; load those
as their own model.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from tuneforge.threads import release_openmp_workers


class UnsupportedAdapter(ValueError):
    """An adapter the per-row path cannot apply (the message says why)."""


class _Rows:
    """Which slot each row of the current forward pass uses (shared by every wrapper of one model)."""

    def __init__(self):
        self.index: torch.Tensor | None = None  # (B,) slot per row
        self.single: int | None = None  # the slot, when every row uses the same one
        self.used = 0  # slots 0..used-1 hold every row's adapter
        self._masks: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def set(self, slots: list[int], device) -> None:
        self.single = slots[0] if len(set(slots)) == 1 else None
        self.index = torch.tensor(slots, device=device)
        self.used = max(slots) + 1
        self._masks = {}

    def mask(self, r: int | tuple[int, ...], dtype: torch.dtype, slots: int | None = None) -> torch.Tensor:
        """(B, 1, (slots - 1) * r): 1 on the rank columns of each row's own slot, among slots 1 to ``slots - 1``
        (default: the used ones; the base's slot 0 has no columns, its delta is zero). Ranks ``(r1, r2, ...)``:
        the masks of several parts side by side (each part's columns slot by slot)."""
        slots = self.used if slots is None else slots
        key = (r, dtype, slots)
        if key not in self._masks:
            hot = nn.functional.one_hot(self.index, slots)[:, 1:].to(dtype)  # (B, slots - 1)
            ranks = r if isinstance(r, tuple) else (r,)
            self._masks[key] = torch.cat([hot.repeat_interleave(k, 1) for k in ranks], 1)[:, None, :]
        return self._masks[key]


class MultiLoRALinear(nn.Module):
    """``base(x)`` plus each row's adapter delta. A: (S, in, r), B: (S, r, out), B already scaled."""

    # bumped whenever any wrapper is put in place or any slot written: code that reads the wrappers of a model
    # (the lean forward's fused projections) looks again only when it changed
    changes = 0

    def __init__(self, base: nn.Linear, rows: _Rows, slots: int):
        super().__init__()
        self.base_layer = base
        self.rows = rows
        w = base.weight
        self.lora_A = torch.zeros(slots, base.in_features, 0, dtype=w.dtype, device=w.device)
        self.lora_B = torch.zeros(slots, 0, base.out_features, dtype=w.dtype, device=w.device)
        self.a_cat = torch.zeros(base.in_features, 0, dtype=w.dtype, device=w.device)  # (in, S*r)
        self.version = 0  # changes with every slot written (a fused copy of A and B knows when to rebuild)
        self.top = 1  # slots 1..top-1 have been written (loaded adapters sit below it; slot 0 is the base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, in)
        y = self.base_layer(x)  # (B, T, out)
        delta = self.delta(x)
        return y if delta is None else y + delta

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """Each row's adapter delta (B, T, out) for input x (B, T, in); None when no row has an adapter."""
        rows = self.rows
        if rows.index is None or self.lora_A.shape[-1] == 0 or rows.single == 0:
            return None
        if rows.single is not None:
            return (x @ self.lora_A[rows.single]) @ self.lora_B[rows.single]
        # every used adapter slot's A at once (slot 0, the base, adds nothing), then each row keeps its own
        # slot's rank columns: two plain matmuls
        r, u = self.lora_A.shape[-1], rows.used
        h = x @ self.a_cat[:, r : u * r]  # (B, T, (u-1)*r)
        h = h * rows.mask(r, h.dtype)
        return h @ self.lora_B[1:u].reshape((u - 1) * r, -1)  # (B, T, out)

    def set_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Write an adapter's A (in, r) and scaled B (r, out) into ``slot`` (None clears it)."""
        r = 0 if a is None else a.shape[1]
        if r > self.lora_A.shape[-1]:  # pad every slot to the larger rank
            grow = r - self.lora_A.shape[-1]
            self.lora_A = nn.functional.pad(self.lora_A, (0, grow))
            self.lora_B = nn.functional.pad(self.lora_B, (0, 0, 0, grow))
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        if a is not None:
            self.lora_A[slot, :, :r] = a.to(self.lora_A)
            self.lora_B[slot, :r] = b.to(self.lora_B)
        self.top = max(self.top, slot + 1)
        s, n_in, rank = self.lora_A.shape
        self.a_cat = self.lora_A.permute(1, 0, 2).reshape(n_in, s * rank)  # (in, S*r), slot-major columns
        self.version += 1
        MultiLoRALinear.changes += 1


class MultiLoRA:
    """Adapter slots on one base model (``slots`` adapters in memory at once, LRU beyond)."""

    def __init__(self, model: nn.Module, slots: int = 8):
        self.model = model
        self.slots = slots
        self.rows = _Rows()
        self.wrappers: dict[str, MultiLoRALinear] = {}
        self.loaded: OrderedDict[str, int] = OrderedDict()  # adapter key -> slot (most recent last)
        self.in_use: dict[int, int] = {}  # slot -> sequences using it
        self.loads: dict[int, int] = {}  # slot -> adapters written into it so far (a cache of keys and values
        # computed with a slot's adapter knows it from the next one loaded there)
        self.lock = threading.Lock()

    # ---- per forward pass
    def set_rows(self, slots: list[int], device) -> None:
        self.rows.set(slots, device)

    # ---- adapters
    def slot(self, key: str, path: str | Path | None = None) -> int:
        """The slot of adapter ``key`` (its folder path unless ``path`` is given), loading it if needed, and
        reserved for one request: the engine releases it when the request ends (``release``)."""
        with self.lock:
            if key in self.loaded:
                self.loaded.move_to_end(key)
                slot = self.loaded[key]
                self.in_use[slot] = self.in_use.get(slot, 0) + 1
                return slot
            a_b = read_lora(Path(path or key))
            used = set(self.loaded.values())
            free = [s for s in range(1, self.slots + 1) if s not in used]
            if not free:
                idle = [k for k, s in self.loaded.items() if not self.in_use.get(s)]
                if not idle:
                    raise RuntimeError(f"all {self.slots} adapter slots are in use; try again shortly")
                free = [self.loaded.pop(idle[0])]  # least recently used
            slot = free[0]
            self._write(slot, a_b)
            self.loaded[key] = slot
            self.in_use[slot] = self.in_use.get(slot, 0) + 1
        if next(self.model.parameters()).device.type == "cpu":
            release_openmp_workers()  # loading ran parallel ops here: don't leave the engine's thread throttled
        return slot

    def release(self, slot: int) -> None:
        with self.lock:
            self.in_use[slot] = self.in_use.get(slot, 1) - 1

    def _write(self, slot: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.loads[slot] = self.loads.get(slot, 0) + 1
        for name in weights:
            if name not in self.wrappers:
                self._wrap(name)
        for name, wrapper in self.wrappers.items():
            a, b = weights.get(name, (None, None))
            wrapper.set_slot(slot, a, b)

    def _wrap(self, name: str) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        base = getattr(parent, child)
        if not isinstance(base, nn.Linear):
            raise UnsupportedAdapter(
                f"the adapter targets {name}, a {type(base).__name__} (only Linear layers)"
            )
        wrapper = MultiLoRALinear(base, self.rows, self.slots + 1)
        setattr(parent, child, wrapper)
        MultiLoRALinear.changes += 1
        self.wrappers[name] = wrapper


def read_lora(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A PEFT LoRA adapter folder as {module name in the base model: (A (in, r), B * scale (r, out))}."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    kind = str(cfg.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise UnsupportedAdapter(f"{folder}: a {kind} adapter (only LoRA is applied per row)")
    for flag, what in (
        ("use_dora", "DoRA"),
        ("modules_to_save", "modules_to_save"),
        ("alpha_pattern", "alpha_pattern"),
    ):
        if cfg.get(flag):
            raise UnsupportedAdapter(f"{folder}: the adapter uses {what}")
    weights_file = folder / "adapter_model.safetensors"
    if weights_file.exists():
        state = load_file(str(weights_file))
    else:
        state = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    alpha = cfg["lora_alpha"]
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in state.items():
        if not key.endswith("lora_A.weight"):
            if "lora_" in key and not key.endswith("lora_B.weight"):
                raise UnsupportedAdapter(f"{folder}: unexpected weight {key} (e.g. an embedding LoRA)")
            continue
        b = state[key.replace("lora_A", "lora_B")]  # (out, r)
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        r = a.shape[0]
        scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
        if cfg.get("fan_in_fan_out"):
            a, b = a.T, b.T
        out[name] = (a.T.float(), (b.T * scale).float())  # (in, r), (r, out)
    if not out:
        raise UnsupportedAdapter(f"{folder}: no LoRA weights found")
    return out
