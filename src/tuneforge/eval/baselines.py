"""Baselines without fine-tuning: what the task scores with the base model alone.

These answer "was fine-tuning needed?" (``tuneforge assess`` and ``eval.baselines`` in every run's report):

- classification with a causal LM: zero-shot (each label name scored by its likelihood after a prompt) and
  k-shot (k labelled examples, stratified over the labels, in front of the same prompt);
- classification with an encoder: k-nearest-neighbours and a logistic-regression probe on the frozen,
  mean-pooled embeddings;
- SFT: answer perplexity of the base model with k worked examples in its prompt, and exact match where the
  answers are short labels;
- preference pairs: the base model's log-probability margin (chosen vs rejected: DPO's implicit reward with
  the base model as its own policy), the longer answer, and (encoders) a Bradley-Terry probe on frozen embeddings.

Every function here is pure over a model, a tokenizer and rows (``Example``); every score carries a bootstrap
interval (``tuneforge.eval.bootstrap``). Nothing here knows task names.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from tuneforge.config import BASELINES, ZERO_SHOT_PROMPT
from tuneforge.data.chat import EncodedChat, encode_prompt_response
from tuneforge.data.formats import Example
from tuneforge.eval.bootstrap import accuracy_ci, macro_f1_ci, mean_ci, perplexity_ci

DEFAULT_PROMPT = ZERO_SHOT_PROMPT  # eval.zero_shot_prompt's default
MAX_FIT_ROWS = 2000  # training rows the frozen-embedding probes fit on (stratified subsample)


# ---------------------------------------------------------------- k-shot examples
def stratified_shots(examples: Sequence[Example], k: int, seed: int, key=lambda e: e.label) -> list[Example]:
    """``k`` examples, as evenly spread over the labels (``key``) as ``k`` allows, in a shuffled order.

    Labels take turns (in a seeded random order) so 5 shots of 2 labels are 3 + 2, never 5 + 0; the
    result is shuffled so the prompt does not end with a run of one label.
    """
    if k <= 0 or not examples:
        return []
    rng = random.Random(seed)
    by_label: dict = defaultdict(list)
    for e in examples:
        by_label[key(e)].append(e)
    pools = {lab: rng.sample(rows, len(rows)) for lab, rows in by_label.items()}
    order = sorted(pools, key=str)
    rng.shuffle(order)
    shots: list[Example] = []
    while len(shots) < min(k, len(examples)):
        for lab in order:
            if pools[lab] and len(shots) < k:
                shots.append(pools[lab].pop())
    rng.shuffle(shots)
    return shots


def classification_prompt(template: str, text: str, labels: Sequence[str]) -> str:
    """The prompt for one text: ``template`` with ``{text}`` and ``{labels}`` (comma-separated) filled in."""
    return template.replace("{labels}", ", ".join(labels)).replace("{text}", text)


def kshot_prompt(template: str, shots: Sequence[Example], text: str, labels: Sequence[str]) -> str:
    """k worked examples (prompt + their label), a blank line after each, then the prompt for ``text``."""
    parts = [f"{classification_prompt(template, s.text or '', labels)} {s.label}" for s in shots]
    return "\n\n".join([*parts, classification_prompt(template, text, labels)])


# ---------------------------------------------------------------- causal-LM scoring
def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def continuation_logprobs(
    model,
    tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 8,
    max_length: int = 1024,
) -> np.ndarray:
    """Summed log-probability of each ``continuations[i]`` after ``contexts[i]`` (the context cut from the
    left when the two exceed ``max_length`` tokens). Returns (N,)."""
    model.eval()
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = []
    for ctx, cont in zip(contexts, continuations):
        c_ids = tokenizer(ctx, add_special_tokens=True)["input_ids"]
        a_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        keep = max(1, max_length - len(a_ids))
        seqs.append((c_ids[-keep:], a_ids))
    out = np.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows = [seqs[i][0] + seqs[i][1] for i in idx]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):  # right padding: positions are those of the unpadded text
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        for r, i in enumerate(idx):
            n_ctx, cont = len(seqs[i][0]), seqs[i][1]
            pos = torch.arange(
                n_ctx - 1, n_ctx - 1 + len(cont), device=device
            )  # predicts each continuation token
            logp = logits[r, pos].float().log_softmax(-1)  # (A, V)
            out[i] = float(logp.gather(1, torch.tensor(cont, device=device)[:, None]).sum())
    return out


@torch.no_grad()
def label_scores(
    model,
    tokenizer,
    prompts: Sequence[str],
    labels: Sequence[str],
    batch_size: int = 8,
    max_length: int = 1024,
) -> np.ndarray:
    """(N, C) log-likelihood of each label name (with a leading space) after each prompt.

    Each prompt runs once (left-padded, with its key/value cache); the cache is repeated for the C labels and
    only the labels' tokens run again, so C labels cost little more than one. Equal to
    ``continuation_logprobs`` of every (prompt, " label") pair.
    """
    model.eval()
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lab = [tokenizer(f" {x}", add_special_tokens=False)["input_ids"] for x in labels]
    n_lab, width_lab = len(lab), max(len(x) for x in lab)
    lab_ids = torch.full((n_lab, width_lab), pad, dtype=torch.long)
    lab_mask = torch.zeros((n_lab, width_lab), dtype=torch.long)
    for c, x in enumerate(lab):
        lab_ids[c, : len(x)] = torch.tensor(x)
        lab_mask[c, : len(x)] = 1
    lab_ids, lab_mask = lab_ids.to(device), lab_mask.to(device)
    keep = max(1, max_length - width_lab)
    ctx = [tokenizer(p, add_special_tokens=True)["input_ids"][-keep:] for p in prompts]
    out = np.zeros((len(prompts), n_lab))
    order = sorted(range(len(ctx)), key=lambda i: len(ctx[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b, width = len(idx), max(len(ctx[i]) for i in idx)
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for r, i in enumerate(idx):  # left padding: every prompt ends at the last column
            ids[r, width - len(ctx[i]) :] = torch.tensor(ctx[i])
            mask[r, width - len(ctx[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) positions of the unpadded text
        first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=width_lab > 1)
        logp = first.logits[:, -1].float().log_softmax(-1)  # (B, V): predicts each label's first token
        score = logp[:, lab_ids[:, 0]]  # (B, C)
        if width_lab > 1:  # the labels' later tokens, on the prompt's cache repeated once per label
            cache = first.past_key_values
            cache.batch_repeat_interleave(n_lab)
            inp = lab_ids.repeat(b, 1)  # (B*C, A): row b*C + c is label c after prompt b
            full_mask = torch.cat([mask.repeat_interleave(n_lab, 0), lab_mask.repeat(b, 1)], 1)
            pos2 = pos[:, -1:].repeat_interleave(n_lab, 0) + 1 + torch.arange(width_lab, device=device)
            nxt = model(input_ids=inp, attention_mask=full_mask, position_ids=pos2, past_key_values=cache)
            lp = nxt.logits[:, :-1].float().log_softmax(-1)  # (B*C, A-1, V): predicts tokens 1..A-1
            tok = inp[:, 1:]
            later = lp.gather(2, tok[..., None])[..., 0] * lab_mask.repeat(b, 1)[:, 1:]  # (B*C, A-1)
            score = score + later.sum(1).view(b, n_lab)
        out[idx] = score.cpu().numpy()
    return out


def _classification_result(name: str, y_true, y_pred, n_labels: int, samples: int, **extra) -> dict:
    """Accuracy and macro-F1 with intervals; ``y_pred`` is kept for paired comparisons with the tuned model."""
    acc, f1 = accuracy_ci(y_true, y_pred, samples), macro_f1_ci(y_true, y_pred, n_labels, samples)
    return {
        "name": name,
        "metric": "accuracy",
        "accuracy": acc.to_dict(),
        "macro_f1": f1.to_dict(),
        **extra,
        "y_pred": [int(x) for x in y_pred],
    }


def lm_classification(
    model,
    tokenizer,
    train: Sequence[Example],
    evaluate: Sequence[Example],
    labels: Sequence[str],
    k: int = 0,
    template: str = DEFAULT_PROMPT,
    seed: int = 42,
    batch_size: int = 8,
    max_length: int = 1024,
    samples: int = 1000,
) -> dict:
    """Zero-shot (``k=0``) or k-shot classification by label likelihood; the prompt of the first row is kept."""
    shots = stratified_shots(train, k, seed)
    prompts = [kshot_prompt(template, shots, e.text or "", labels) for e in evaluate]
    scores = label_scores(model, tokenizer, prompts, labels, batch_size, max_length)  # (N, C)
    y_true = [list(labels).index(e.label) for e in evaluate]
    y_pred = scores.argmax(1).tolist()
    name = "zero_shot" if k == 0 else "k_shot"
    return _classification_result(
        name, y_true, y_pred, len(labels), samples, k=k, prompt=prompts[0] if prompts else ""
    )


# ---------------------------------------------------------------- frozen embeddings
@torch.no_grad()
def hidden_features(
    model, tokenizer, texts: Sequence[str], max_length: int = 128, batch_size: int = 32, layers: str = "last"
) -> np.ndarray:
    """Mean-pooled hidden states over the non-padding tokens: (N, H) of the last layer, or
    (L + 1, N, H) of every layer (``layers="all"``: the embeddings, then each block)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    body = getattr(model, "base_model", model)
    per_batch = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        ).to(device)
        out = body(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True
        )
        m = enc["attention_mask"][None, :, :, None].float()  # (1, B, T, 1)
        hs = torch.stack(
            out.hidden_states if layers == "all" else out.hidden_states[-1:]
        ).float()  # (L, B, T, H)
        pooled = (hs * m).sum(2) / m.sum(2).clamp(min=1)  # (L, B, H)
        per_batch.append((idx, pooled.cpu().numpy()))
    model.train(was_training)
    n_layers = per_batch[0][1].shape[0] if per_batch else 1
    dim = per_batch[0][1].shape[2] if per_batch else 0
    feats = np.zeros((n_layers, len(texts), dim), dtype=np.float32)
    for idx, pooled in per_batch:
        feats[:, idx] = pooled
    return feats if layers == "all" else feats[0]


def fit_subset(examples: Sequence[Example], seed: int, cap: int = MAX_FIT_ROWS) -> list[Example]:
    """At most ``cap`` training rows, stratified by label (the probes need no more to be stable)."""
    return list(examples) if len(examples) <= cap else stratified_shots(examples, cap, seed)


def knn_predict(x_train: np.ndarray, y_train, x_eval: np.ndarray, k: int = 10) -> list[int]:
    """Cosine k-nearest-neighbours vote (sklearn)."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(x_train)), metric="cosine", weights="distance")
    return knn.fit(x_train, y_train).predict(x_eval).tolist()


def logreg_predict(x_train: np.ndarray, y_train, x_eval: np.ndarray, seed: int = 0) -> list[int]:
    """A standardised, L2-regularised logistic-regression probe (sklearn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, random_state=seed))
    return probe.fit(x_train, y_train).predict(x_eval).tolist()


def embedding_classification(
    model,
    tokenizer,
    train: Sequence[Example],
    evaluate: Sequence[Example],
    labels: Sequence[str],
    which: Sequence[str] = ("knn", "logreg"),
    seed: int = 42,
    max_length: int = 128,
    batch_size: int = 32,
    samples: int = 1000,
    neighbours: int = 10,
) -> list[dict]:
    """k-NN and a logistic-regression probe on the frozen embeddings; one result per name in ``which``."""
    fit = fit_subset(train, seed)
    x_tr = hidden_features(model, tokenizer, [e.text or "" for e in fit], max_length, batch_size)
    x_ev = hidden_features(model, tokenizer, [e.text or "" for e in evaluate], max_length, batch_size)
    ids = {label: i for i, label in enumerate(labels)}
    y_tr, y_true = [ids[e.label] for e in fit], [ids[e.label] for e in evaluate]
    out = []
    for name in which:
        pred = (
            knn_predict(x_tr, y_tr, x_ev, neighbours)
            if name == "knn"
            else logreg_predict(x_tr, y_tr, x_ev, seed)
        )
        out.append(_classification_result(name, y_true, pred, len(labels), samples, fit_rows=len(fit)))
    return out


# ---------------------------------------------------------------- language models: answers
def prompt_and_answer(e: Example) -> tuple[list[dict], str]:
    """An SFT example as (the conversation before its last assistant turn, that turn's text)."""
    msgs = list(e.messages)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last], msgs[last]["content"]


def kshot_conversation(shots: Sequence[Example], prompt: list[dict]) -> list[dict]:
    """The prompt with k worked examples (each a user turn and its answer) before its first user turn."""
    system = [m for m in prompt[:1] if m["role"] == "system"]
    rest = prompt[len(system) :]
    worked: list[dict] = []
    for s in shots:
        p, a = prompt_and_answer(s)
        worked += [m for m in p if m["role"] != "system"] + [{"role": "assistant", "content": a}]
    return system + worked + rest


def _norm(text: str) -> str:
    return re.sub(r"[^\w\s]", "", text.lower()).strip().split("\n")[0].strip()


def short_answers(answers: Sequence[str], max_words: int = 3) -> bool:
    """Answers are short labels (exact match means something): most are at most ``max_words`` words."""
    return bool(answers) and float(np.median([len(a.split()) for a in answers])) <= max_words


def sft_kshot(
    model,
    tokenizer,
    train: Sequence[Example],
    evaluate: Sequence[Example],
    k: int = 0,
    seed: int = 42,
    batch_size: int = 8,
    max_length: int = 1024,
    samples: int = 1000,
    exact_match: bool | None = None,
) -> dict:
    """The base model's answer perplexity with k worked examples in its prompt (and exact match for short answers)."""
    from tuneforge.eval.forgetting import example_nll

    shots = stratified_shots(train, k, seed, key=lambda e: _norm(prompt_and_answer(e)[1]))
    convs, answers = [], []
    for e in evaluate:
        p, a = prompt_and_answer(e)
        convs.append(kshot_conversation(shots, p))
        answers.append(a)
    enc: list[EncodedChat] = []
    for conv, a in zip(convs, answers):
        x = encode_prompt_response(tokenizer, conv, [{"role": "assistant", "content": a}], None)
        if len(x.input_ids) > max_length:  # keep the answer: cut the context from the left
            x = EncodedChat(x.input_ids[-max_length:], x.labels[-max_length:], True)
        enc.append(x)
    nll, count = example_nll(model, tokenizer, enc, batch_size, max_length)
    ppl = perplexity_ci(nll, count, samples)
    name = "zero_shot" if k == 0 else "k_shot"
    out = {
        "name": name,
        "metric": "perplexity",
        "k": k,
        "perplexity": ppl.to_dict(),
        "prompt": convs[0] if convs else [],
    }
    if exact_match is None:
        exact_match = short_answers(answers)
    if exact_match:
        from tuneforge.models.generate import generate

        said = generate(model, tokenizer, convs, max_new_tokens=16, batch_size=batch_size)
        hits = [float(_norm(s) == _norm(a)) for s, a in zip(said, answers)]
        out["exact_match"] = mean_ci(hits, samples).to_dict()
    return out


# ---------------------------------------------------------------- preference pairs
def preference_logprob(
    model,
    tokenizer,
    evaluate: Sequence[Example],
    batch_size: int = 8,
    max_length: int = 1024,
    samples: int = 1000,
) -> dict:
    """The base model prefers the chosen answer when its log-probability is higher (summed over its tokens;
    also per token). With the base model as its own reference this is DPO's starting point."""
    from tuneforge.eval.forgetting import example_nll

    rows = []
    for e in evaluate:
        for resp in (e.chosen, e.rejected):
            rows.append(encode_prompt_response(tokenizer, e.messages, resp, max_length))
    nll, count = example_nll(model, tokenizer, rows, batch_size, max_length)
    nll, count = nll.reshape(-1, 2), np.maximum(count.reshape(-1, 2), 1)
    margin = nll[:, 1] - nll[:, 0]  # log p(chosen) - log p(rejected)
    per_token = nll[:, 1] / count[:, 1] - nll[:, 0] / count[:, 0]
    return {
        "name": "logprob_margin",
        "metric": "preference_accuracy",
        "preference_accuracy": mean_ci(margin > 0, samples).to_dict(),
        "per_token_accuracy": mean_ci(per_token > 0, samples).to_dict(),
        "mean_margin": float(margin.mean()) if len(margin) else float("nan"),
    }


def _answer_text(messages: Sequence[dict] | None) -> str:
    return " ".join(m["content"] for m in messages or [])


def preference_length(evaluate: Sequence[Example], samples: int = 1000) -> dict:
    """The longer answer wins (ties count half): what length alone predicts."""
    wins = []
    for e in evaluate:
        c, r = len(_answer_text(e.chosen)), len(_answer_text(e.rejected))
        wins.append(1.0 if c > r else 0.5 if c == r else 0.0)
    return {
        "name": "length",
        "metric": "preference_accuracy",
        "preference_accuracy": mean_ci(wins, samples).to_dict(),
    }


def preference_probe(
    model,
    tokenizer,
    train: Sequence[Example],
    evaluate: Sequence[Example],
    seed: int = 42,
    max_length: int = 128,
    batch_size: int = 32,
    samples: int = 1000,
) -> dict:
    """A Bradley-Terry probe on frozen embeddings: logistic regression on emb(prompt+chosen) - emb(prompt+rejected)
    (each pair seen both ways round), the reward model's "no fine-tuning" baseline."""

    def text(e: Example, resp) -> str:
        return _answer_text(e.messages) + "\n" + _answer_text(resp)

    def diffs(rows: Sequence[Example]) -> np.ndarray:
        a = hidden_features(model, tokenizer, [text(e, e.chosen) for e in rows], max_length, batch_size)
        b = hidden_features(model, tokenizer, [text(e, e.rejected) for e in rows], max_length, batch_size)
        return a - b

    fit = list(train)[:MAX_FIT_ROWS]
    d_tr, d_ev = diffs(fit), diffs(evaluate)
    x = np.concatenate([d_tr, -d_tr])
    y = [1] * len(d_tr) + [0] * len(d_tr)
    pred = logreg_predict(x, y, d_ev, seed)
    return {
        "name": "bt_probe",
        "metric": "preference_accuracy",
        "preference_accuracy": mean_ci(np.asarray(pred) == 1, samples).to_dict(),
        "fit_rows": len(fit),
    }


def headline_value(result: dict) -> tuple[str, float, float, float]:
    """(metric, value, low, high) of a baseline result, for tables and recommendations."""
    m = result["metric"]
    iv = result[m]
    return m, iv["value"], iv["low"], iv["high"]


# ---------------------------------------------------------------- per task (duck-typed: splits, labels, tokenizer)
def base_is_encoder(name: str) -> bool:
    """The model ``name`` is an encoder (no causal-LM head): embedding baselines instead of prompting."""
    from transformers import AutoConfig

    from tuneforge.models.load import is_encoder, resolve_model

    path = resolve_model(name)
    if not (path / "config.json").exists():  # an adapter folder: its base decides
        import json

        path = resolve_model(
            json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        )
    return is_encoder(AutoConfig.from_pretrained(path))


def available(result: str, encoder: bool) -> list[str]:
    """The baselines a task whose eval.json ``result`` type is ``result`` can have, with this base model."""
    if result == "classification":
        return ["knn", "logreg"] if encoder else ["zero_shot", "k_shot"]
    if result == "language_model":
        return [] if encoder else ["zero_shot", "k_shot"]
    if result == "preference":
        return ["length"] if encoder else ["logprob_margin", "length"]
    if result == "reward_model":
        return ["length", "bt_probe"] + ([] if encoder else ["logprob_margin"])
    return []


def chosen(setting: str | list[str], result: str, encoder: bool) -> list[str]:
    """The baselines ``eval.baselines`` asks for that this task and model support (auto: all of them)."""
    can = available(result, encoder)
    if setting == "none":
        return []
    if setting == "auto":
        return can
    return [b for b in setting if b in can and b in BASELINES]


def load_base(name: str, encoder: bool, dtype: str = "float32"):
    """The base model as the baselines use it: the bare encoder, or the causal LM."""
    if encoder:
        from transformers import AutoModel

        from tuneforge.models.load import resolve_model

        return AutoModel.from_pretrained(resolve_model(name))
    from tuneforge.models.load import load_causal_lm

    return load_causal_lm(name, dtype)


def for_task(task, cfg, split: str = "validation", names: str | list[str] | None = None, model=None) -> dict:
    """Every baseline ``names`` (default ``cfg.eval.baselines``) asks for, on ``split`` of a built task.

    ``task`` needs ``result``, ``splits`` and ``tokenizer`` (and ``labels`` for classification); the base
    model is loaded from ``cfg.model.name`` unless given. Returns the baselines.json document.
    """
    import time

    from tuneforge.data.split import subsample

    t0 = time.perf_counter()
    e, seed = cfg.eval, cfg.training.seed
    encoder = base_is_encoder(cfg.model.name)
    which = chosen(e.baselines if names is None else names, task.result, encoder)
    rows = subsample(task.splits.get(split) or [], e.baseline_examples, seed)
    train = task.splits["train"]
    out = {
        "split": split,
        "n": len(rows),
        "model": cfg.model.name,
        "result": task.result,
        "encoder": encoder,
        "asked": e.baselines if names is None else names,
        "available": available(task.result, encoder),
        "baselines": [],
    }
    if not which or not rows:
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out
    if model is None and which != ["length"]:
        model = load_base(cfg.model.name, encoder, cfg.model.dtype)
    tok, samples, bs = task.tokenizer, e.bootstrap_samples, min(e.batch_size, 16)
    max_len = max(cfg.data.max_length, 1024)
    res: list[dict] = []
    if task.result == "classification":
        labels = list(task.labels)
        if encoder:
            res += embedding_classification(
                model,
                tok,
                train,
                rows,
                labels,
                [w for w in which if w in ("knn", "logreg")],
                seed,
                cfg.data.max_length,
                e.batch_size,
                samples,
            )
        for name in which:
            if name in ("zero_shot", "k_shot"):
                k = 0 if name == "zero_shot" else e.few_shot_k
                res.append(
                    lm_classification(
                        model, tok, train, rows, labels, k, e.zero_shot_prompt, seed, bs, max_len, samples
                    )
                )
    elif task.result == "language_model":
        for name in which:
            k = 0 if name == "zero_shot" else e.few_shot_k
            res.append(sft_kshot(model, tok, train, rows, k, seed, bs, max_len, samples))
    else:  # preference pairs (dpo) or a reward model
        pairs = [r for r in rows if r.chosen is not None and r.rejected is not None]
        for name in which:
            if name == "length":
                res.append(preference_length(pairs, samples))
            elif name == "logprob_margin":
                res.append(preference_logprob(model, tok, pairs, bs, max_len, samples))
            elif name == "bt_probe":
                fit = [r for r in train if r.chosen is not None and r.rejected is not None]
                res.append(
                    preference_probe(model, tok, fit, pairs, seed, cfg.data.max_length, e.batch_size, samples)
                )
    if split != "test":  # per-example predictions are kept only beside the test evaluation (paired intervals)
        for r in res:
            r.pop("y_pred", None)
    out["baselines"] = res
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
