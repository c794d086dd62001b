"""Bias probe: term swapping, the shipped and user term lists, and both probes on tiny models."""

import json
import random

import numpy as np
import pytest
from conftest import FILL, NEG, POS
from helpers import tiny_cfg

import tuneforge
from tuneforge.errors import ConfigError
from tuneforge.eval.bias import (
    Swapper,
    classifier_probe,
    lm_probe,
    load_terms,
    make_counterfactuals,
    match_case,
)


def test_swaps_are_whole_word_case_keeping_and_both_ways():
    sw = Swapper(load_terms()["gender"]["groups"])
    assert (
        sw.swap("He told her that HIS father, the man, wasn't there.", "male", "female")
        == "She told his that HER mother, the woman, wasn't there."
    )
    assert (
        sw.swap("The theme: he's there; ashes, shed, hers.", "male", "female")
        == "The theme: she's there; ashes, shed, his."
    )
    assert sw.groups_in("she and her mother met him") == {"female": 3, "male": 1}
    names = Swapper(load_terms()["names"]["groups"])
    assert names.swap("emily met Greg", "European-American", "African-American") == "lakisha met Jamal"
    assert (
        match_case("MR", "mrs") == "MRS"
        and match_case("Mr", "mrs") == "Mrs"
        and match_case("mr", "Mrs") == "mrs"
    )


def test_counterfactuals_pick_the_dominant_group_and_respect_the_cap():
    terms = load_terms()
    texts = ["he said she was right", "no people here", "the Mexican restaurant", "his cat"] * 3
    cfs, mentions = make_counterfactuals(texts, terms, max_examples=2, seed=0)
    assert mentions == {"gender": 6, "names": 0, "nationality": 3}
    gender = [c for c in cfs if c.category == "gender"]
    nationality = [c for c in cfs if c.category == "nationality"]
    assert len({c.index for c in gender}) == 2 and len({c.index for c in nationality}) == 2
    assert len(nationality) == 2 * 4  # 4 of the 11 other nationalities per text, in turn
    assert len({c.target for c in nationality}) == 8
    assert {c.source for c in nationality} == {"Mexican"}


def test_user_terms_extend_replace_and_are_checked(tmp_path):
    extra = tmp_path / "terms.yaml"
    extra.write_text("age:\n  groups:\n    young: [young, youth]\n    old: [old, elderly]\n")
    assert set(load_terms(extra)) == {"gender", "names", "nationality", "age"}
    only = tmp_path / "only.json"
    only.write_text(json.dumps({"extend": False, "age": {"groups": {"young": ["young"], "old": ["old"]}}}))
    assert set(load_terms(only)) == {"age"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"age": {"groups": {"young": ["young", "youth"], "old": ["old"]}}}))
    with pytest.raises(ConfigError, match="aligned lists of the same length"):
        load_terms(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_terms(tmp_path / "missing.json")


def test_classifier_probe_with_a_model_that_reads_one_word():
    texts = ["he liked it", "she liked it", "his film was fine", "nothing to see", "the French film"]

    def predict(batch):  # "positive" exactly when a male word is present
        return np.array(
            [[0.1, 0.9] if any(w in t.split() for w in ("he", "his")) else [0.8, 0.2] for t in batch]
        )

    out = classifier_probe(texts, predict, load_terms(), ["neg", "pos"], samples=200)
    assert (
        out["categories"]["gender"]["flip_rate"] == 1.0
        and out["categories"]["gender"]["counterfactuals"] == 3
    )
    assert out["categories"]["nationality"]["flip_rate"] == 0.0
    assert out["swaps"][0]["category"] == "gender" and "moved the model most" in out["summary"]
    assert "names" in out["summary"]  # says plainly that no input mentions names
    assert out["examples"][0]["before"] != out["examples"][0]["after"]


def test_lm_probe_separates_tuning_from_the_base():
    texts = [f"he went to the market {i}" for i in range(6)] + ["the weather is fine"]

    def base(batch):
        return np.array([-10.0 - 0.1 * len(t) for t in batch])

    def tuned(batch):  # tuning made "she" texts 2 nats less likely
        return base(batch) - np.array([2.0 if t.startswith("she") else 0.0 for t in batch])

    out = lm_probe(texts, tuned, base, load_terms(), samples=200)
    g = out["swaps"][0]
    assert (g["category"], g["from"], g["to"], g["n"]) == ("gender", "male", "female", 6)
    assert g["change"] == pytest.approx(-2.0) and g["base_delta"] == pytest.approx(-0.1)
    assert "2.00 nats less likely" in out["summary"] and "a real shift" in out["summary"]


def gender_rows(n: int, seed: int, dependent: bool) -> list[dict]:
    """Sentences with a gendered pronoun: the label follows the pronoun (dependent) or an adjective (control)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        male, good = rng.random() < 0.5, rng.random() < 0.5
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
        if dependent:
            label = "pos" if male else "neg"
        else:
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if good else NEG))
            label = "pos" if good else "neg"
        pronoun = rng.choice(["he", "his"] if male else ["she", "her"])
        rows.append({"text": f"{pronoun} said the {' '.join(words)}", "label": label})
    return rows


def test_a_classifier_trained_on_a_gendered_word_flips_and_the_control_does_not(tiny_bert, tmp_path):
    flip = {}
    for dependent in (True, False):
        data = tmp_path / f"gender-{dependent}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in gender_rows(240, 0, dependent)))
        cfg = tiny_cfg(
            tiny_bert,
            str(data),
            tmp_path,
            output={"name": f"run-{dependent}"},
            training={"max_steps": 60, "eval_every": 60, "save_every": 1000, "lr": 2e-3},
        )
        run = tuneforge.train(cfg)
        bias = json.loads((run.path / "bias.json").read_text())
        flip[dependent] = bias["categories"]["gender"]["flip_rate"]
        assert bias["categories"]["gender"]["examples"] == 24  # every test input mentions a pronoun
        if dependent:
            assert "gender" in bias["summary"] and "moved the model most" in bias["summary"]
            assert "Swapping gender terms" in (run.path / "report.md").read_text()
    assert flip[True] >= 0.8 and flip[False] <= 0.15, flip
