"""Speed choices: compiled blocks and the attention kernel give the same loss and gradients as the plain path."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneforge.train.compile import (
    can_compile,
    choose_attention,
    compile_blocks,
    compile_settings,
    repeated_blocks,
    should_compile,
)
from tuneforge.train.lm_loss import lm_loss


def _lora(path: str, attn: str = "sdpa"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn)
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def _batch(vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab - 1, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100  # prompt tokens carry no loss
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batch):
    loss, n = lm_loss(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach() / n, torch.autograd.grad(loss / n, params)


def test_eager_attention_matches_sdpa(tiny_llama):
    batch = _batch(49152)
    ref_loss, ref_grads = _loss_and_grads(_lora(tiny_llama, "sdpa"), batch)
    model = _lora(tiny_llama, "sdpa")
    assert choose_attention("eager", model, 20, torch.device("cpu")) == "eager"
    loss, grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not can_compile(torch.device("cpu"))[0], reason="no C++ compiler for torch.compile")
def test_compiled_blocks_match_the_plain_model(tiny_llama):
    model = _lora(tiny_llama)
    batch = _batch(model.config.vocab_size)
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    compiled = copy.deepcopy(model)
    assert compile_blocks(compiled) == 2  # the two decoder layers
    assert compiled.state_dict().keys() == model.state_dict().keys()  # saves exactly like the plain model
    with compile_settings():
        for _ in range(2):  # a second call reuses the compiled graph
            loss, grads = _loss_and_grads(compiled, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_auto_compiles_only_long_adapter_runs_on_big_enough_models(tiny_llama, tiny_bert, monkeypatch):
    from tuneforge.train import compile as compile_module  # tuneforge.train the attribute is the function

    lora = _lora(tiny_llama)
    assert len(repeated_blocks(lora)) == 2
    cpu = torch.device("cpu")
    assert not should_compile("auto", lora, 1000, cpu)  # tiny blocks: compiling would not pay
    assert not should_compile(False, lora, 1000, cpu)
    assert should_compile(True, lora, 5, cpu) == can_compile(cpu)[0]
    monkeypatch.setattr(compile_module, "MIN_BLOCK_PARAMETERS", 0)
    assert should_compile("auto", lora, 1000, cpu) == can_compile(cpu)[0]
    assert not should_compile("auto", lora, 5, cpu)  # too few steps
    assert not should_compile(
        "auto", lora, 99, cpu, samples_during_training=True
    )  # GRPO: a long first compile
    assert should_compile("auto", lora, 100, cpu, samples_during_training=True) == can_compile(cpu)[0]
    assert should_compile(True, lora, 1000, cpu, samples_during_training=True) == can_compile(cpu)[0]
    from transformers import AutoModelForSequenceClassification

    full = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert not should_compile("auto", full, 1000, cpu)  # the blocks' own weights train


def _settings() -> tuple:
    import torch._dynamo
    import torch._functorch.config as functorch_config

    d = torch._dynamo.config
    return d.suppress_errors, d.cache_size_limit, functorch_config.activation_memory_budget


def test_compile_settings_hold_for_one_run_only():
    """Two configurations in one process (a notebook) each get their own settings; nothing leaks after."""
    import torch._functorch.config as functorch_config

    before = _settings()
    with compile_settings(memory_budget=0.5):
        suppress, cache, budget = _settings()
        assert suppress and cache >= 64 and budget == 0.5
    assert _settings() == before  # the next run, compiled or not, starts from torch's own settings
    with compile_settings():
        assert _settings()[2] == 0.7
    assert _settings() == before
    with pytest.raises(RuntimeError), compile_settings():  # restored when the run fails too
        raise RuntimeError("training failed")
    assert _settings() == before
    old = functorch_config.activation_memory_budget
    functorch_config.activation_memory_budget = 0.3  # the user's own choice is kept, inside and after
    try:
        with compile_settings():
            assert _settings()[2] == 0.3
        assert _settings()[2] == 0.3
    finally:
        functorch_config.activation_memory_budget = old


def test_compile_blocks_changes_no_process_wide_setting(tiny_llama):
    before = _settings()
    assert compile_blocks(_lora(tiny_llama)) == 2
    assert _settings() == before
