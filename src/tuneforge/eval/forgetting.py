"""Catastrophic forgetting: perplexity of the base and the tuned language model on a general-English text.

The default reference (``eval.forgetting_text: builtin``) is ``resources/reference_english.txt``: about 2,000
words of plain modern English prose in 22 paragraphs (everyday topics, a letter, instructions, news, dialogue),
written for tuneforge and released with it, so it is always installed and no pre-trained model has seen it.
(The bundled ``book-excerpts`` alias also works, but its text has punctuation stripped and excerpts cut
mid-sentence, which is not the English a model is meant to keep.) Any .txt file (paragraphs separated by blank
lines), data file or bundled alias can be given instead.

Each paragraph (or row) is one unit, cut into windows of at most ``max_length`` tokens; perplexity is
token-weighted over all units, and its bootstrap interval resamples whole units.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tuneforge.data.chat import EncodedChat
from tuneforge.data.packing import pad_batch
from tuneforge.errors import DataError
from tuneforge.eval.bootstrap import perplexity_ci, perplexity_ratio_ci
from tuneforge.train.lm_loss import token_nll
from tuneforge.utils import tracked

REFERENCE_FILE = Path(__file__).resolve().parent.parent / "resources" / "reference_english.txt"


def example_text(e) -> str:
    """The plain text of an example of any format (raw text, or the turns of a conversation, one per line)."""
    if e.text is not None:
        return e.text
    turns = list(e.messages) + list(e.chosen or [])
    return "\n".join(str(m.get("content", "")) for m in turns)


def paragraphs(text: str) -> list[str]:
    parts = [" ".join(p.split()) for p in text.split("\n\n")]
    parts = [p for p in parts if p]
    if len(parts) == 1:  # no blank lines: one unit per line
        parts = [line.strip() for line in text.splitlines() if line.strip()]
    return parts


def reference_texts(
    spec: str, max_texts: int | None = None, field: str = "eval.forgetting_text"
) -> tuple[list[str], str]:
    """Units of reference text and a name for them: ``builtin``, a .txt file, a data file or a bundled alias."""
    if spec == "builtin":
        texts, name = (
            paragraphs(REFERENCE_FILE.read_text(encoding="utf-8")),
            "built-in English reference text",
        )
    elif Path(spec).suffix in (".txt", ".md") and Path(spec).is_file():
        texts, name = paragraphs(Path(spec).read_text(encoding="utf-8")), spec
    else:
        from tuneforge.data.bundled import resolve
        from tuneforge.data.formats import to_examples

        try:
            table, hint = resolve(spec)
        except DataError as e:
            raise DataError(
                f"{field}: {e} Use 'builtin', a .txt file, a data file or a bundled alias."
            ) from None
        examples, _ = to_examples(table, hint if hint in ("messages", "text") else "auto")
        texts, name = [example_text(e) for e in examples], spec
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError(f"{field}: {spec} holds no text.")
    return (texts[:max_texts] if max_texts else texts), name


def encode_windows(tokenizer, text: str, max_length: int) -> list[EncodedChat]:
    """A text as windows of at most ``max_length`` tokens (the first with the tokenizer's BOS, if it adds one)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return [
        EncodedChat(ids[i : i + max_length], ids[i : i + max_length])
        for i in range(0, len(ids), max_length)
        if len(ids[i : i + max_length]) > 1
    ]


@torch.no_grad()
def example_nll(
    model,
    tokenizer,
    examples: Sequence[str] | Sequence[EncodedChat],
    batch_size: int = 8,
    max_length: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Per example: summed negative log-likelihood (nats) over its loss tokens, and how many there are.

    Strings are scored on every token after the first of each window; encoded chats on their labelled
    tokens (the same tokens ``tuneforge.eval.perplexity.nll`` scores, which sums these).
    """
    units = [encode_windows(tokenizer, x, max_length) if isinstance(x, str) else [x] for x in examples]
    flat = [(u, w) for u, ws in enumerate(units) for w in ws]
    nll, count = np.zeros(len(units)), np.zeros(len(units), dtype=np.int64)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(flat)), key=lambda i: len(flat[i][1].input_ids))
    for start in tracked(range(0, len(order), batch_size), "log-likelihoods"):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([flat[i][1] for i in idx], pad).items()}
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits  # (B, T, V)
        for row, i in enumerate(idx):
            loss, n = token_nll(logits[row : row + 1], batch["labels"][row : row + 1])
            nll[flat[i][0]] += float(loss)
            count[flat[i][0]] += n
    model.train(was_training)
    return nll, count


def forgetting_result(
    nll_tuned, nll_base, counts, threshold: float = 0.1, name: str = "reference text", samples: int = 1000
) -> dict:
    """Base and tuned perplexity with 95% intervals, the relative change (paired interval) and a verdict."""
    tuned, base = perplexity_ci(nll_tuned, counts, samples), perplexity_ci(nll_base, counts, samples)
    change = perplexity_ratio_ci(nll_tuned, counts, nll_base, counts, samples)
    warn = change.value > threshold
    real = change.excludes(0.0)
    if warn:
        message = (
            f"Forgetting warning: perplexity on the {name} rose {100 * change.value:.1f}% "
            f"(base {base.value:.2f} -> tuned {tuned.value:.2f}, 95% CI of the change "
            f"{100 * change.low:+.1f}% to {100 * change.high:+.1f}%), above the {100 * threshold:.0f}% threshold: "
            f"the tuned model has lost some general English. A lower learning rate, fewer steps, LoRA instead of "
            f"full fine-tuning, or mixing general text into the data reduce this."
        )
    elif change.value > 0 and real:
        message = (
            f"Mild forgetting: perplexity on the {name} rose {100 * change.value:.1f}% "
            f"(base {base.value:.2f} -> tuned {tuned.value:.2f}), a real but small change, under the "
            f"{100 * threshold:.0f}% threshold."
        )
    elif change.value <= 0 and real:
        message = (
            f"No forgetting: perplexity on the {name} fell {100 * -change.value:.1f}% "
            f"(base {base.value:.2f} -> tuned {tuned.value:.2f})."
        )
    else:
        message = (
            f"No measurable forgetting: perplexity on the {name} changed {100 * change.value:+.1f}% "
            f"(base {base.value:.2f} -> tuned {tuned.value:.2f}; 95% CI of the change "
            f"{100 * change.low:+.1f}% to {100 * change.high:+.1f}% includes zero)."
        )
    return {
        "name": name,
        "units": len(counts),
        "tokens": int(np.sum(counts)),
        "threshold": threshold,
        "base": base.to_dict(),
        "tuned": tuned.to_dict(),
        "relative_change": change.to_dict(),
        "warning": bool(warn),
        "message": message,
    }
