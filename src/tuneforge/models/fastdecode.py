"""A lean forward pass for the generation engine on Llama-family decoders (Llama, SmolLM2, Qwen2/3, Mistral).

The engine's steps are small (one token per row when decoding), so on a CPU most of a transformers forward
pass is not arithmetic: it is the generic module code around it (mask building, keyword plumbing, hooks,
three projections where one would do) and matmuls that repack their weight on every call. This forward
computes the same thing with less of both:

* **Fused, prepacked projections**: q/k/v are one matmul, gate/up one, and each weight (the output layer's
  too) is concatenated once and, on a CPU with oneDNN, reordered once into oneDNN's blocked layout
  (``torch.ops.mkldnn._linear_pointwise``, what inductor's freezing uses), so a decode step reads the
  weights without repacking them. Measured on SmolLM2-135M, 16 rows, bf16: 159 against 217 us for a
  576x1536 projection.
* **One additive mask and one rotary table per step**, shared by every layer; attention is
  ``scaled_dot_product_attention`` on the engine's cache buffers, a decode step's grouped queries of each
  key/value head as one block (prefill: grouped-query heads, ``enable_gqa``). RMSNorms are torch's
  fused ``rms_norm`` on the modules' weights (one op for six), and each layer's modules are looked up once,
  not at every step (~450 module attribute reads a step); the adapters' wrappers are read again only when one
  changed.
* **Adapters per row**: a :class:`~tuneforge.models.multilora.MultiLoRALinear` in place of a projection
  keeps the fused base matmul, with every loaded adapter's A folded into its weight (one matmul computes the
  base and ``x A``), and adds its rows' deltas to that projection's columns.

It computes the model's function with the model's own parameters (in place: a change to them is seen, except
in the packed projections) and its rotary embedding and embedding modules; the engine's tests check it equals
``model.generate`` token for token. The packed weights are a copy of the projections' weights, made once: the
forward is for frozen weights (serving, chat, generation), not for a policy being trained.
``fast_decoder(model)`` returns None for any other model (then the engine runs the model's own forward).
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.models.multilora import MultiLoRALinear

FAMILIES = {"llama", "qwen2", "qwen3", "mistral"}
# their RMSNorm classes: weight * (x / sqrt(mean(x^2) + variance_epsilon)), computed in fp32
RMS_NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}


def fast_decoder(model, batch_hint: int = 16) -> FastDecoder | None:
    """A :class:`FastDecoder` for ``model`` (a plain transformers causal LM of the Llama family, possibly
    wrapped per row by MultiLoRA), or None when the model is anything else (PEFT wrappers, other families,
    options the lean forward does not implement)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in FAMILIES or hasattr(model, "peft_config"):
        return None
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return None
    if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return None  # sliding-window attention: the model's own forward masks it
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return None
    for layer in inner.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        parts = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        parts += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if not all(isinstance(_base(p), nn.Linear) for p in parts):
            return None
    if not isinstance(getattr(model, "lm_head", None), nn.Linear):
        return None
    return FastDecoder(model, batch_hint)


def _base(module):
    return module.base_layer if isinstance(module, MultiLoRALinear) else module


def packing_available(weight: torch.Tensor) -> bool:
    """Whether oneDNN can hold ``weight`` prepacked on this machine (CPU, fp32, or bf16 where the CPU has it)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.float32:
        return True
    return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class FusedLinear:
    """Several projections of the same input as one matmul: ``parts`` are (owner module, attribute name);
    the current module there is read on every call, so a MultiLoRA wrapper added later is applied."""

    def __init__(self, parts: list[tuple[nn.Module, str]], batch_hint: int):
        self.parts = parts
        bases = [_base(getattr(owner, name)) for owner, name in parts]
        weight = _cat_weights(bases)
        biases = [b.bias for b in bases]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat(
                [
                    b.detach() if b is not None else weight.new_zeros(m.out_features)
                    for b, m in zip(biases, bases)
                ]
            )
        self.sizes = [b.out_features for b in bases]
        self.batch_hint = batch_hint
        self.packed = packing_available(weight)
        self.weight = self._pack(weight)
        self.out = sum(self.sizes)  # the projections' outputs (the weight may hold adapters' A below them)
        # the wrappers (and their versions) the folded adapters were built from, and the folded adapters (_fold)
        self._lora_key: tuple | None = None
        self._wrapped: list[tuple[int, int, MultiLoRALinear]] = []
        self._folded: tuple[int, tuple[int, ...], list[tuple]] | None = None
        self._seen = -1  # MultiLoRALinear.changes when the parts were last read (and what they held)
        self._rows = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._adapters()
        if rows is None:
            return _linear(x, self.weight, self.bias, self.packed)
        top, ranks, parts = self._fold()  # first: a slot written since the last call changes the weight
        y = _linear(x, self.weight, self.bias, self.packed)
        out = self.out
        if rows.index is not None and rows.single != 0:
            y2 = y.view(-1, y.shape[-1])
            h = y2[:, out:]  # x A of every loaded slot, computed by the base's own matmul
            if rows.single is not None:  # one adapter for every row: its columns and its B, no mask
                s = rows.single
                for c0, r, at, size, b in parts:
                    y2[:, at : at + size].addmm_(h[:, c0 + (s - 1) * r : c0 + s * r], b[(s - 1) * r : s * r])
            else:  # each row keeps its own slot's columns; B of the used slots only
                y.view(x.shape[0], -1, y.shape[-1])[:, :, out:].mul_(rows.mask(ranks, x.dtype, top))
                n = rows.used - 1
                for c0, r, at, size, b in parts:
                    y2[:, at : at + size].addmm_(h[:, c0 : c0 + n * r], b[: n * r])
        return y[..., :out]

    def _adapters(self):
        """The per-row slots (MultiLoRA's ``_Rows``) when a MultiLoRA wrapper is among the parts, else None;
        notices wrappers added or slots written since the last call (the folded weight is then rebuilt). The
        parts are read again only when some wrapper changed (``MultiLoRALinear.changes``): reading them is ~20
        us a call, ~2 ms a decode step."""
        changes = MultiLoRALinear.changes
        if changes != self._seen:
            self._seen = changes  # first: a change during the read is seen at the next call
            self._rows = self._read_parts()
        return self._rows

    def _read_parts(self):
        wrapped = []
        start = 0
        for (owner, name), size in zip(self.parts, self.sizes):
            module = getattr(owner, name)
            if isinstance(module, MultiLoRALinear) and module.lora_A.shape[-1]:
                wrapped.append((start, size, module))
            start += size
        if not wrapped:
            return None
        key = tuple((id(m), m.version) for _, _, m in wrapped)
        if key != self._lora_key:
            self._lora_key, self._wrapped, self._folded = key, wrapped, None
        return wrapped[0][2].rows

    def _fold(self) -> tuple[int, tuple[int, ...], list[tuple]]:
        """Fold every loaded slot's A into the base weight, below its outputs: the base matmul then also
        computes ``x A`` (columns part by part, slot by slot within a part), and a row's delta is one
        in-place ``addmm_`` of its columns by B per part, on that part's output columns. One matmul fewer
        per projection than a separate A (~120 a step on a 30-layer model; these small matmuls are
        latency-bound on a CPU: 16x576 by 576x24 takes about as long as the base's extra columns), and no
        zero blocks in B (a B spanning q/k/v's outputs was 2/3 zeros). A batch of the base alone pays the
        extra columns while adapters are loaded (2-20% of a projection for rank 8, 1 to 8 slots). Returns
        (top: slots 1..top-1 folded, each part's rank, [(first column, rank, first output, outputs, B of slots
        1..top-1 stacked) per part])."""
        if self._folded is None:
            base = _cat_weights([_base(getattr(owner, name)) for owner, name in self.parts])
            top = max(m.top for _, _, m in self._wrapped)
            a_rows, parts, col = [], [], 0
            for at, size, m in self._wrapped:
                r = m.lora_A.shape[-1]
                a_rows.append(m.lora_A[1:top].permute(0, 2, 1).reshape((top - 1) * r, -1))
                parts.append((col, r, at, size, m.lora_B[1:top].reshape((top - 1) * r, size).clone()))
                col += (top - 1) * r
            weight = torch.cat([base, *a_rows])
            if self.bias is not None:
                self.bias = torch.cat([self.bias[: self.out], self.bias.new_zeros(col)])
            self.weight = self._pack(weight)
            self._folded = (top, tuple(part[1] for part in parts), parts)
        return self._folded

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        if self.packed:
            try:
                return torch.ops.mkldnn._reorder_linear_weight(weight, self.batch_hint)
            except RuntimeError:  # an unusual shape or build: the plain matmul
                self.packed = False
        return weight


def _cat_weights(linears: list[nn.Linear]) -> torch.Tensor:
    """The weights of projections of one input, stacked (out1 + out2 + ..., in)."""
    if len(linears) == 1:
        return linears[0].weight.detach()
    return torch.cat([m.weight.detach() for m in linears])


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: bool) -> torch.Tensor:
    if not packed:
        return nn.functional.linear(x, weight, bias)
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
    return y.view(*x.shape[:-1], y.shape[-1])


class FastDecoder:
    """The lean forward (see the module's docstring) of one Llama-family causal LM."""

    def __init__(self, model, batch_hint: int = 16):
        self.model = model
        inner = model.model
        self.inner = inner
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = []
        # per layer, what a step reads (looked up once: a module attribute costs ~1 us, ~450 a step): the
        # norms, the fused projections (which read the projections' modules at every call), attention's scale,
        # and Qwen3's query and key norms (else None)
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            self.layers.append(
                (
                    _norm(layer.input_layernorm),
                    FusedLinear([(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj")], batch_hint),
                    attn.scaling,
                    None if q_norm is None else (_norm(q_norm), _norm(k_norm)),
                    FusedLinear([(attn, "o_proj")], batch_hint),
                    _norm(layer.post_attention_layernorm),
                    FusedLinear([(mlp, "gate_proj"), (mlp, "up_proj")], batch_hint),
                    FusedLinear([(mlp, "down_proj")], batch_hint),
                )
            )
        self.norm = _norm(inner.norm)
        self.lm_head = FusedLinear([(model, "lm_head")], batch_hint)

    def __call__(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T or 1, V) of ``ids`` (B, T) at ``positions`` (B, T), appending their keys and values
        to ``cache`` (a BatchCache whose columns ``mask`` (B, cached + T), 1 for real tokens, describes)."""
        # in the weights' own dtype, whatever autocast surrounds the call (a training loop's evaluation): the
        # packed weights take inputs of their dtype only
        with torch.autocast(ids.device.type, enabled=False):
            return self._forward(ids, mask, positions, cache, last_only)

    def _forward(self, ids, mask, positions, cache, last_only: bool) -> torch.Tensor:
        b, t = ids.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, positions)
        # (B, T, 1, D): every head of a position; rotate_half(x) * sin == swap_halves(x) * sin with its first
        # half negated (the same products: a sign flip is exact)
        cos = cos.unsqueeze(2)
        sin = torch.cat((-sin[..., : d // 2], sin[..., d // 2 :]), -1).unsqueeze(2)
        keys = mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        if t > 1:  # causal among the new tokens; a padding query sees itself (no row without a key)
            s = mask.shape[1]
            q_at = torch.arange(s - t, s, device=ids.device)[:, None]
            k_at = torch.arange(s, device=ids.device)[None, :]
            keys = (keys & (k_at <= q_at)) | (k_at == q_at)  # (B, 1, T, S)
        # additive, made once for every layer (a boolean mask is converted by each attention call)
        bias = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill_(~keys, float("-inf"))
        # one new token a row: each key/value head's queries are one (B, KV, H / KV, D) block, the grouped heads
        # as its query positions (the same products, in fewer and larger tasks than grouped-query broadcast)
        fold = t == 1 and kv != h
        for i, (attn_norm, qkv, scale, qk_norms, o_proj, mlp_norm, gate_up, down) in enumerate(self.layers):
            y = qkv(attn_norm(x)).view(b, t, h + 2 * kv, d)
            if qk_norms is not None:  # Qwen3: RMSNorm over each query and key head
                qk = torch.cat((qk_norms[0](y[:, :, :h]), qk_norms[1](y[:, :, h : h + kv])), 2)
            else:
                qk = y[:, :, : h + kv]
            swapped = qk.unflatten(-1, (2, d // 2)).flip(-2).flatten(-2)
            qk = (qk * cos + swapped.mul_(sin)).transpose(1, 2)  # queries and keys rotated at once
            q, k = qk[:, :h], qk[:, h:]
            v = y[:, :, h + kv :].transpose(1, 2)
            k, v = cache.layers[i].update(k, v)
            if fold:
                a = nn.functional.scaled_dot_product_attention(
                    q.reshape(b, kv, h // kv, d), k, v, attn_mask=bias, scale=scale
                )
                a = a.reshape(b, t, h * d)
            else:
                a = nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=bias, scale=scale, enable_gqa=kv != h
                )
                a = a.transpose(1, 2).reshape(b, t, h * d)
            x = x + o_proj(a)
            gate, up = gate_up(mlp_norm(x)).chunk(2, -1)
            x = x + down(nn.functional.silu(gate).mul_(up))
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))


def _norm(module: nn.Module):
    """A function computing ``module(x)``: for the families' RMSNorm modules (one formula in each), torch's
    fused ``rms_norm`` (one op instead of the module's six, ~40% less time; equal in fp32, and in a lower
    precision the normalised input is rounded before the weight multiplies it, as the module does); any other
    module itself."""
    if type(module).__name__ not in RMS_NORMS:
        return module
    weight, eps = module.weight, module.variance_epsilon  # the parameter itself: in-place changes are seen

    def rms_norm(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and weight.dtype == torch.float32:
            return nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
        return weight * nn.functional.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)

    return rms_norm
