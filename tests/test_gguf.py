"""GGUF export: the file transformers reads back (``gguf_file=``) is the tuned model, its tokenizer and template."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.test_export import chat_file, lora_run, trained  # noqa: F401  (module fixtures reused)
from tuneforge.errors import TuneforgeError

PROMPTS = ["Say lamp.", "Say river.", "Say violin please.", "What is a garden?"]


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok


def tuned(run):
    from tuneforge.run import Run

    model = Run(run.path).load_model().merge_and_unload().eval()
    return model, Run(run.path).load_tokenizer()


def chat_ids(tok, prompt: str) -> torch.Tensor:
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tok(text, add_special_tokens=False, return_tensors="pt").input_ids


def test_f16_file_gives_the_tuned_logits_tokens_and_template(lora_run, tmp_path):  # noqa: F811
    from tuneforge.serve.gguf import export_gguf

    out = export_gguf(lora_run.path, tmp_path / "tuned.gguf", quant="f16")
    model, tok = tuned(lora_run)
    back, back_tok = load_gguf(out)
    assert back_tok.chat_template == tok.chat_template
    for prompt in PROMPTS:
        ids = chat_ids(tok, prompt)
        assert torch.equal(chat_ids(back_tok, prompt), ids)  # the same tokens through the file's tokenizer
        with torch.no_grad():
            assert (model(ids).logits - back(ids).logits).abs().max().item() < 1e-2


def test_q8_0_file_answers_greedily_as_the_tuned_model(lora_run, tmp_path):  # noqa: F811
    from tuneforge.serve.gguf import export_gguf

    out = export_gguf(lora_run.path, tmp_path / "tuned-q8.gguf", quant="q8_0")
    f16 = export_gguf(lora_run.path, tmp_path / "tuned-f16.gguf", quant="f16")
    assert out.stat().st_size < 0.75 * f16.stat().st_size  # the 2-D weights really are 8-bit
    model, tok = tuned(lora_run)
    back, _ = load_gguf(out)
    for prompt in PROMPTS:
        ids = chat_ids(tok, prompt)
        kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tok.pad_token_id}
        with torch.no_grad():
            assert torch.equal(model.generate(ids, **kw), back.generate(ids, **kw))


def test_cli_writes_gguf_and_refuses_what_it_cannot_write(lora_run, tmp_path, tiny_llama, chat_file):  # noqa: F811
    from tuneforge.cli import main

    out = tmp_path / "cli.gguf"
    main(["export", str(lora_run.path), str(out), "--quant", "q8_0"])
    assert out.exists() and not list(tmp_path.glob(".*partial"))
    with pytest.raises(SystemExit):  # exists, no --overwrite
        main(["export", str(lora_run.path), str(out)])
    main(["export", str(lora_run.path), str(out), "--overwrite"])
    with pytest.raises(SystemExit):  # --quant without a .gguf name
        main(["export", str(lora_run.path), str(tmp_path / "folder"), "--quant", "f16"])

    from tuneforge.serve.gguf import export_gguf

    prefix = trained(tiny_llama, chat_file, tmp_path / "runs", "prompt")
    with pytest.raises(TuneforgeError, match="cannot be merged"):
        export_gguf(prefix.path, tmp_path / "prompt.gguf")


def test_unknown_architecture_is_named(tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tuneforge.models.gguf_write import write_gguf
    from tuneforge.models.load import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok)))
    with pytest.raises(TuneforgeError, match="'gpt2' architecture.*writes llama, mistral, qwen2 and gemma3"):
        write_gguf(model, tok, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_llama_cpp_runs_the_file(lora_run, tmp_path):  # noqa: F811
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(
            "llama-cpp-python is not installed (it builds llama.cpp from source); pip install llama-cpp-python"
        )
    from llama_cpp import Llama

    from tuneforge.serve.gguf import export_gguf

    out = export_gguf(lora_run.path, tmp_path / "tuned.gguf", quant="f16")
    model, tok = tuned(lora_run)
    ids = chat_ids(tok, PROMPTS[0])
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)[
            0, ids.shape[1] :
        ]
    llm = Llama(model_path=str(out), n_ctx=256, verbose=False)
    got = llm.generate(ids[0].tolist(), temp=0.0)
    assert [next(got) for _ in range(len(want))] == want.tolist()


@pytest.mark.e2e
@pytest.mark.slow  # 85 s: writes and reads back 550 MB; `make test-all` runs it
def test_gemma3_round_trip(tmp_path):
    """The bundled Gemma-3-270M (itself read from a GGUF file) written and read back: same tokens, same logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models.gguf_write import write_gguf
    from tuneforge.models.load import resolve_model

    src = resolve_model("gemma3-270m")
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = write_gguf(model, tok, tmp_path / "gemma.gguf", quant="f16")
    back, back_tok = load_gguf(out)
    ids = tok("The capital of France is Paris, and 12 + 30 = 42.", return_tensors="pt").input_ids
    assert torch.equal(
        back_tok("The capital of France is Paris, and 12 + 30 = 42.", return_tensors="pt").input_ids, ids
    )
    with torch.no_grad():
        a, b = model(ids).logits, back(ids).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item()
