"""Why a tuned model decided as it did: integrated gradients on the input embeddings (Captum).

For a classifier, each token's contribution to the probability of the predicted (or a given) label; for a
language model, each prompt token's contribution to the log-probability of a response. Integrated gradients
(Sundararajan et al. 2017) integrates the gradient along a straight path from a *baseline* input to the real
one; here the path runs in the space of the word embeddings (Captum's ``LayerIntegratedGradients`` on the
embedding layer), and the baseline is the same input with every explained token replaced by the padding
token (special tokens, positions and, for a language model, the chat template and the response stay). The
attributions then sum to ``score(input) - score(baseline)`` up to the integration error, which Captum reports
as the convergence delta (more ``n_steps`` make it smaller).

Token pieces are summed into words where the tokenizer says which word a piece belongs to (fast tokenizers).

Python::

    from tuneforge.eval.explain import explain_classifier, format_explanation
    [e] = explain_classifier(model, tokenizer, ["a gripping, beautiful film"])
    print(format_explanation(e))
    run.explain(["a gripping, beautiful film"])            # the same through a Run
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from tuneforge.errors import TuneforgeError

INSTALL = "pip install 'tuneforge[explain]'"
N_STEPS = 50  # integration steps: Captum's default; the convergence delta says whether they were enough


def require_captum():
    """Captum's ``LayerIntegratedGradients``, or a TuneforgeError naming the extra that installs it."""
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise TuneforgeError(f"explanations use Captum, which is not installed: {INSTALL}") from None
    return LayerIntegratedGradients


def captum_available() -> bool:
    try:
        require_captum()
    except TuneforgeError:
        return False
    return True


def baseline_token(tokenizer) -> int:
    """The token that stands for 'no word' in the baseline: padding, else unknown, else end-of-sequence."""
    for tid in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise TuneforgeError(
        "explain: the tokenizer has no padding, unknown or end token to build a baseline from."
    )


def integrated_gradients(
    model,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    explained: torch.Tensor,
    baseline_id: int,
    n_steps: int = N_STEPS,
    internal_batch_size: int | None = None,
) -> dict:
    """Integrated gradients of ``score(ids, mask) -> (B,)`` for one sequence ``input_ids`` (1, T) with respect to
    its word embeddings; ``explained`` (T,) bool marks the tokens the baseline replaces by ``baseline_id``.

    Returns {attributions (T,) list, delta, score, baseline_score}: ``sum(attributions) = score - baseline_score
    + delta``-ish; precisely, Captum's delta is ``sum(attributions) - (score - baseline_score)``.
    """
    LayerIntegratedGradients = require_captum()
    mask = torch.ones_like(input_ids)  # (1, T): one unpadded sequence
    baseline = torch.where(explained.unsqueeze(0).to(input_ids.device), baseline_id, input_ids)  # (1, T)
    lig = LayerIntegratedGradients(score, model.get_input_embeddings())
    attrs, delta = lig.attribute(
        inputs=input_ids,
        baselines=baseline,
        additional_forward_args=(mask,),
        n_steps=n_steps,
        internal_batch_size=internal_batch_size or n_steps,
        return_convergence_delta=True,
    )  # attrs (1, T, H)
    with torch.no_grad():
        value = float(score(input_ids, mask)[0])
        base_value = float(score(baseline, mask)[0])
    return {
        "attributions": attrs.sum(-1)[0].float().cpu().tolist(),  # (T,): summed over the embedding dimensions
        "delta": float(delta.reshape(-1)[0]),
        "score": value,
        "baseline_score": base_value,
    }


def merge_words(text: str, enc, attributions: Sequence[float], keep: Sequence[bool]) -> list[dict]:
    """Token pieces -> words: consecutive kept tokens of one word (``enc.word_ids()``, fast tokenizers) are summed,
    the word's text taken from the character offsets. Without word ids every kept token is its own entry."""
    offsets = enc["offset_mapping"][0].tolist() if "offset_mapping" in enc else None
    try:
        word_ids = enc.word_ids(0)
    except (ValueError, AttributeError):  # a slow tokenizer
        word_ids = None
    pieces = enc.tokens(0) if hasattr(enc, "tokens") else None
    out: list[dict] = []
    last = None
    for i, a in enumerate(attributions):
        if not keep[i]:
            last = None
            continue
        w = word_ids[i] if word_ids is not None else None
        if offsets is not None:
            start, end = offsets[i]
        else:
            start = end = None
        if out and w is not None and w == last:
            out[-1]["attribution"] += a
            if end is not None:
                out[-1]["end"] = end
        else:
            out.append(
                {"attribution": a, "start": start, "end": end, "piece": pieces[i] if pieces else str(i)}
            )
        last = w
    for o in out:
        piece = o.pop("piece")
        o["word"] = text[o["start"] : o["end"]].strip() if o["start"] is not None else piece
        o["attribution"] = round(o["attribution"], 6)
    return [o for o in out if o["word"]]


def _tokens(tokenizer, enc, attributions: Sequence[float]) -> list[dict]:
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    return [{"token": p, "attribution": round(a, 6)} for p, a in zip(pieces, attributions)]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def explain_classifier(
    model,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[str | int | None] | None = None,
    max_length: int = 512,
    n_steps: int = N_STEPS,
) -> list[dict]:
    """Each token's (and word's) contribution to the probability of the predicted label of every text (or of
    ``labels[i]``, a name or index, where given). Returns one JSON-ready dict per text."""
    require_captum()
    model.eval()
    device = _device(model)
    id2label = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    label2id = {v: k for k, v in id2label.items()}
    base_id = baseline_token(tokenizer)
    special = set(tokenizer.all_special_ids)
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise TuneforgeError(
                f"explain: text {i + 1} of {len(texts)} is empty; give the text to classify."
            )
        enc = tokenizer(
            text, truncation=True, max_length=max_length, return_tensors="pt", return_offsets_mapping=True
        )
        ids = enc["input_ids"].to(device)  # (1, T)
        with torch.no_grad():
            probs = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().softmax(-1)[0]
        predicted = int(probs.argmax())
        want = labels[i] if labels is not None else None
        if want is None:
            target = predicted
        elif isinstance(want, int):
            target = want
        elif want in label2id:
            target = label2id[want]
        else:
            raise TuneforgeError(
                f"explain: label {want!r} (text {i + 1}) is not one of the model's labels: "
                f"{', '.join(map(str, id2label.values()))}."
            )

        def score(ids_, mask_, target=target):
            return model(input_ids=ids_, attention_mask=mask_).logits.float().softmax(-1)[:, target]  # (B,)

        explained = torch.tensor([t not in special for t in enc["input_ids"][0].tolist()])
        ig = integrated_gradients(model, score, ids, explained, base_id, n_steps)
        out.append(
            {
                "text": text,
                "label": id2label.get(target, str(target)),
                "predicted": id2label.get(predicted, str(predicted)),
                "probability": round(float(probs[target]), 6),
                "score": "probability",
                "baseline_probability": round(ig["baseline_score"], 6),
                "delta": ig["delta"],
                "n_steps": n_steps,
                "words": merge_words(text, enc, ig["attributions"], explained.tolist()),
                "tokens": _tokens(tokenizer, enc, ig["attributions"]),
            }
        )
    return out


def explain_lm(
    model,
    tokenizer,
    prompts: Sequence[str | list],
    responses: Sequence[str],
    system_prompt: str | None = None,
    max_length: int = 2048,
    n_steps: int = N_STEPS,
) -> list[dict]:
    """Each prompt word's contribution to the log-probability (nats, summed over its tokens) of the response.

    A prompt is a string (one user turn) or a conversation; it is rendered with the tokenizer's chat template
    (with ``system_prompt``) as in training. The words of the last user turn are explained; the template, the
    system prompt and the response stay as they are in the baseline.
    """
    from tuneforge.data.chat import render_prompt
    from tuneforge.models.generate import as_conversation

    require_captum()
    if len(prompts) != len(responses):
        raise TuneforgeError(
            f"explain: {len(prompts)} prompts but {len(responses)} responses; give one each."
        )
    model.eval()
    device = _device(model)
    base_id = baseline_token(tokenizer)
    special = set(tokenizer.all_special_ids)
    out = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        if not response or not str(response).strip():
            raise TuneforgeError(
                f"explain: response {i + 1} of {len(responses)} is empty; give the answer to explain."
            )
        messages = as_conversation(prompt, system_prompt)
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        rendered = render_prompt(tokenizer, messages) if tokenizer.chat_template else user
        full = rendered + response
        enc = tokenizer(full, add_special_tokens=False, return_tensors="pt", return_offsets_mapping=True)
        if enc["input_ids"].shape[1] > max_length:
            raise TuneforgeError(
                f"explain: prompt and response {i + 1} are {enc['input_ids'].shape[1]} tokens, over the "
                f"{max_length} this run trains on; shorten them."
            )
        offsets = enc["offset_mapping"][0].tolist()
        ids_list = enc["input_ids"][0].tolist()
        start = rendered.rfind(user) if user else -1
        span = (start, start + len(user)) if start >= 0 else (0, 0)
        explained = torch.tensor(
            [
                span[0] <= s and e <= span[1] and e > s and t not in special
                for (s, e), t in zip(offsets, ids_list)
            ]
        )
        answer = torch.tensor([e > len(rendered) for _, e in offsets])  # (T,) tokens of the response
        if not answer.any() or not explained.any():
            raise TuneforgeError(
                f"explain: row {i + 1}: the prompt or the response has no tokens to explain."
            )
        positions = answer.nonzero().squeeze(-1).to(device)  # (R,)
        ids = enc["input_ids"].to(device)  # (1, T)

        def score(ids_, mask_, positions=positions):
            logits = model(input_ids=ids_, attention_mask=mask_).logits.float()  # (B, T, V)
            logp = logits[:, positions - 1].log_softmax(-1)  # (B, R, V): each response token from its prefix
            return logp.gather(-1, ids_[:, positions].unsqueeze(-1)).squeeze(-1).sum(-1)  # (B,)

        ig = integrated_gradients(model, score, ids, explained, base_id, n_steps)
        out.append(
            {
                "prompt": prompt if isinstance(prompt, str) else user,
                "response": response,
                "log_prob": round(ig["score"], 6),
                "score": "log_prob",
                "baseline_log_prob": round(ig["baseline_score"], 6),
                "delta": ig["delta"],
                "n_steps": n_steps,
                "response_tokens": int(answer.sum()),
                "words": merge_words(full, enc, ig["attributions"], explained.tolist()),
                "tokens": [t for t, k in zip(_tokens(tokenizer, enc, ig["attributions"]), explained) if k],
            }
        )
    return out


def top_words(explanation: dict, k: int = 5) -> list[dict]:
    """The ``k`` words with the largest contributions, by absolute value."""
    return sorted(explanation["words"], key=lambda w: -abs(w["attribution"]))[:k]


def format_explanation(e: dict, width: int = 24) -> str:
    """A plain-text table of one explanation: the words in order with their contributions and a bar."""
    if "label" in e:
        head = (
            f"{e['label']} (p={e['probability']:.3f}; the baseline {e['baseline_probability']:.3f}) · "
            f"integrated gradients, {e['n_steps']} steps · contributions sum to p(input) − p(baseline) = "
            f"{e['probability'] - e['baseline_probability']:+.4f}, convergence delta {e['delta']:+.4f}"
        )
        unit = "probability"
    else:
        head = (
            f"log p(response) = {e['log_prob']:.3f} nats over {e['response_tokens']} tokens (the baseline "
            f"{e['baseline_log_prob']:.3f}) · integrated gradients, {e['n_steps']} steps · contributions sum to "
            f"{e['log_prob'] - e['baseline_log_prob']:+.4f}, convergence delta {e['delta']:+.4f}"
        )
        unit = "nats"
    words = e["words"]
    scale = max((abs(w["attribution"]) for w in words), default=0.0) or 1.0
    wlen = min(max((len(w["word"]) for w in words), default=4), 30)
    lines = [head, f"{'word':<{wlen}}  {'contribution':>12}  ({unit}; + pushes towards it)"]
    for w in words:
        a = w["attribution"]
        bar = ("+" if a >= 0 else "-") * max(0, round(abs(a) / scale * width)) if not math.isnan(a) else "?"
        lines.append(f"{w['word'][:30]:<{wlen}}  {a:>+12.4f}  {bar}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- for the report
REPORT_STEPS = 32  # integration steps per explanation in a run's report (the delta is recorded beside each)
MAX_FLIPS = 50  # bias-probe flips explained at most (both sides of each)


def _changed_words(before: dict, after: dict) -> list[dict]:
    """The words a swap changed, with their contribution to the same label before and after."""
    a, b = before["words"], after["words"]
    if len(a) != len(b):
        return []
    return [
        {"from": x["word"], "to": y["word"], "before": x["attribution"], "after": y["attribution"]}
        for x, y in zip(a, b)
        if x["word"].lower() != y["word"].lower()
    ]


def explain_for_report(
    model,
    tokenizer,
    texts: Sequence[str],
    y_true: Sequence[int],
    probs,
    labels: Sequence[str],
    counterfactuals: Sequence,
    cf_probs,
    n_errors: int,
    max_length: int,
    seed: int = 0,
    n_steps: int = REPORT_STEPS,
) -> dict:
    """explanations.json of a classifier run: a random sample of ``n_errors`` misclassified test texts (why the
    wrong label won) and every bias-probe flip (up to ``MAX_FLIPS``): the original and its counterfactual,
    both explained for the label the original got, so the swapped word's contribution can be read side by side.

    ``probs`` (N, C): the tuned model's probabilities of ``texts``; ``counterfactuals``: the bias probe's
    (``eval.bias.make_counterfactuals``) with ``cf_probs`` (K, C) their probabilities.
    """
    import random

    import numpy as np

    probs, cf_probs = np.asarray(probs), np.asarray(cf_probs)
    pred = probs.argmax(-1) if len(probs) else np.zeros(0, dtype=int)
    wrong = [i for i in range(len(texts)) if int(pred[i]) != int(y_true[i])]
    chosen = sorted(random.Random(seed).sample(wrong, min(n_errors, len(wrong))))
    errors = []
    for i, e in zip(
        chosen, explain_classifier(model, tokenizer, [texts[i] for i in chosen], None, max_length, n_steps)
    ):
        errors.append({"index": i, "true": labels[int(y_true[i])], **e})
    flips_all = [
        (c, int(probs[c.index].argmax()), int(p.argmax()))
        for c, p in zip(counterfactuals, cf_probs)
        if int(p.argmax()) != int(probs[c.index].argmax())
    ]
    flips = []
    for c, before, after in flips_all[:MAX_FLIPS]:
        orig, cf = explain_classifier(
            model, tokenizer, [texts[c.index], c.text], [before, before], max_length, n_steps
        )
        flips.append(
            {
                "index": c.index,
                "category": c.category,
                "swap": f"{c.source} → {c.target}",
                "before": labels[before],
                "after": labels[after],
                "changed": _changed_words(orig, cf),
                "original": orig,
                "counterfactual": cf,
            }
        )
    every = [e for e in errors] + [x for f in flips for x in (f["original"], f["counterfactual"])]
    return {
        "method": "integrated gradients on the input embeddings (Captum LayerIntegratedGradients)",
        "score": "probability of the label explained",
        "baseline": "the same text with every word replaced by the padding token",
        "n_steps": n_steps,
        "test_texts": len(texts),
        "test_errors": len(wrong),
        "errors": errors,
        "flips_total": len(flips_all),
        "flips": flips,
        "max_abs_delta": max((abs(e["delta"]) for e in every), default=0.0),
    }
