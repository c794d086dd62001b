"""Chat findings: turn and role statistics per split; conversations without an assistant turn (an error:
nothing to train on), ending on a user turn, with repeated roles or a late system prompt."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tuneforge.data.audit.report import Finding, SplitSummary, finding
from tuneforge.data.audit.rows import Flat


def _same_role(x: str, y: str) -> bool:
    return x == y != "system"


def chat_findings(a: Flat, summaries: list[SplitSummary]) -> list[Finding]:
    out = []
    checks = {  # code: (what, test on the sequence of roles)
        "no_assistant_turn": ("without an assistant turn", lambda r: "assistant" not in r),
        "ends_with_user": ("that end on a user turn", lambda r: r[-1] == "user" and "assistant" in r),
        "repeated_role": ("with two turns of one role in a row", lambda r: any(map(_same_role, r, r[1:]))),
        "late_system": ("with a system turn after the start", lambda r: "system" in r[1:]),
    }
    for k, name in enumerate(a.names):
        idx = a.indices(k)
        if not idx:
            continue
        convs = [a.examples[i].messages + (a.examples[i].chosen or []) for i in idx]
        roles = [[t["role"] for t in c] for c in convs]
        turns = np.asarray([len(c) for c in convs])  # (n,)
        summaries[k].chat = {
            "conversations": len(idx),
            "turns_mean": round(float(turns.mean()), 2),
            "turns_p50": int(np.median(turns)),
            "turns_max": int(turns.max()),
            "multi_turn": int((turns > 2).sum()),
            "roles": dict(Counter(r for rs in roles for r in rs).most_common()),
            "with_system": sum(1 for rs in roles if rs and rs[0] == "system"),
        }
        for code, (what, test) in checks.items():
            hits = [i for i, rs in zip(idx, roles) if test(rs)]
            if hits:
                examples = [a.row(i) for i in hits[:5]]
                out.append(
                    finding(code, name, f"{len(hits):,} conversations {what}", a.where(hits), examples)
                )
    return out
