"""Forgetting: per-example NLL against the model's own loss and the SFT perplexity, reference texts, the verdict."""

import numpy as np
import pytest
import torch

from tuneforge.data.chat import encode_text
from tuneforge.errors import DataError
from tuneforge.eval.forgetting import example_nll, forgetting_result, reference_texts
from tuneforge.eval.perplexity import nll as task_nll

TEXTS = [
    "The train left the city a little after nine.",
    "Bread is one of the oldest foods that people make, "
    "and at its simplest it needs only flour, water, salt and yeast.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def test_example_nll_equals_the_models_own_loss(llama):
    model, tok = llama
    nll, count = example_nll(model, tok, TEXTS, batch_size=2)  # padded batches of different lengths
    for text, n, c in zip(TEXTS, nll, count):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = model(input_ids=ids, labels=ids).loss  # mean over the T-1 predicted tokens
        assert c == ids.shape[1] - 1
        assert n == pytest.approx(float(ref) * c, rel=1e-4)


def test_example_nll_sums_to_the_task_perplexity_and_windows_long_texts(llama):
    model, tok = llama
    encoded = [encode_text(tok, t, 64) for t in TEXTS]
    nll, count = example_nll(model, tok, encoded)
    total, n = task_nll(model, tok, encoded)
    assert nll.sum() == pytest.approx(total, rel=1e-4) and count.sum() == n
    ids = tok(TEXTS[1])["input_ids"]
    _, windows = example_nll(model, tok, [TEXTS[1]], max_length=8)
    assert windows[0] == sum(
        len(ids[i : i + 8]) - 1 for i in range(0, len(ids), 8) if len(ids[i : i + 8]) > 1
    )


def test_reference_texts(tmp_path):
    texts, name = reference_texts("builtin")
    assert len(texts) == 22 and name == "built-in English reference text"
    assert 1800 < sum(len(t.split()) for t in texts) < 3000
    f = tmp_path / "mine.txt"
    f.write_text("First paragraph here.\n\nSecond one,\nwrapped.\n\n\nThird.")
    assert reference_texts(str(f))[0] == ["First paragraph here.", "Second one, wrapped.", "Third."]
    assert len(reference_texts("builtin", max_texts=5)[0]) == 5
    with pytest.raises(DataError, match="eval.forgetting_text"):
        reference_texts("no-such-file.jsonl")


def test_verdicts():
    rng = np.random.default_rng(0)
    counts = rng.integers(50, 150, 22)
    base = counts * rng.uniform(2.0, 2.4, 22)
    worse = forgetting_result(base + counts * 0.3, base, counts, threshold=0.1)  # ppl x e^0.3 = +35%
    assert worse["warning"] and "Forgetting warning" in worse["message"]
    assert worse["relative_change"]["value"] == pytest.approx(np.exp(0.3) - 1)
    same = forgetting_result(base + 10 * (-1) ** np.arange(22), base, counts)  # no change overall
    assert not same["warning"] and same["relative_change"]["low"] < 0 < same["relative_change"]["high"]
    better = forgetting_result(base - counts * 0.05, base, counts)
    assert not better["warning"] and better["message"].startswith("No forgetting")
