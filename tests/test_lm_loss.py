"""The chunked linear cross-entropy: same loss and gradients as logits + F.cross_entropy, less memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tuneforge.train.lm_loss import linear_cross_entropy


def _case(dtype=torch.float32, weight_grad=True):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(16, 101, bias=False)
    head.weight.data = torch.randn(101, 16, generator=g).to(dtype)
    head.weight.requires_grad_(weight_grad)
    targets = torch.randint(0, 101, (37,), generator=g)
    return hidden, head, targets


@pytest.mark.parametrize("weight_grad", [True, False])
def test_loss_and_gradients_match_the_plain_path(weight_grad):
    hidden, head, targets = _case(weight_grad=weight_grad)
    ref = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    ref_h, *ref_w = torch.autograd.grad(ref * 0.3, [hidden] + ([head.weight] if weight_grad else []))
    loss = linear_cross_entropy(hidden, head, targets, chunk=8)  # 5 chunks, the last one short
    got_h, *got_w = torch.autograd.grad(loss * 0.3, [hidden] + ([head.weight] if weight_grad else []))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_h, ref_h, rtol=1e-5, atol=1e-5)
    if weight_grad:
        torch.testing.assert_close(got_w[0], ref_w[0], rtol=1e-5, atol=1e-5)


def test_bf16_autocast_matches_autocast_reference():
    hidden, head, targets = _case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
        loss = linear_cross_entropy(hidden, head, targets, chunk=16)
    (ref_h,) = torch.autograd.grad(ref, hidden)
    (got_h,) = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(got_h, ref_h, rtol=2e-2, atol=2e-2)


class _CountMatmuls(TorchDispatchMode):
    """Counts the matrix multiplications dispatched while active."""

    OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func in self.OPS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("autocast", [False, True])
def test_no_gradient_work_under_no_grad(autocast):
    """Evaluation and probes run under no_grad with trainable inputs: one matmul per chunk, no gradients."""
    hidden, head, targets = _case()  # both hidden and weight require grad
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
        with _CountMatmuls() as count:
            loss = linear_cross_entropy(hidden, head, targets, chunk=8)  # 37 rows: 5 chunks
    assert count.n == 5  # the forward matmuls only (15 when the gradients are computed too)
    assert not loss.requires_grad and loss.dtype == torch.float32
    tol = {"rtol": 1e-3, "atol": 1e-2} if autocast else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(loss, ref, **tol)


def test_gradient_work_when_training():
    """With grad mode on, the forward computes both gradients (3 matmuls a chunk) and backward adds none."""
    hidden, head, targets = _case()
    with _CountMatmuls() as count:
        loss = linear_cross_entropy(hidden, head, targets, chunk=8)
        loss.backward()
    assert count.n == 15
    assert hidden.grad is not None and head.weight.grad is not None
