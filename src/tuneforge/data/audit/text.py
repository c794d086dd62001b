"""Findings about the characters of the text: undecodable bytes (U+FFFD), mojibake, control and invisible
characters, and (optional) personal data: e-mail addresses and phone numbers."""

from __future__ import annotations

import re

from tuneforge.data.audit.report import Finding, finding
from tuneforge.data.audit.rows import Flat, example_strings

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 except tab/newline/CR, DEL, C1
INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")  # zero-width, bidi, BOM
REPLACEMENT = re.compile("\ufffd")  # what undecodable bytes became when the file was read
# UTF-8 read as Latin-1/cp1252: "Ã©" for "é", "â€™" for "’"
MOJIBAKE = re.compile(r"Ã[\u0080-\u00bf]|Â[\u00a0-\u00bf]|â€")
EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
RESERVED_DOMAIN = re.compile(
    r"@(?:[\w-]+\.)*(?:example\.(?:com|org|net)|example|test|invalid|localhost)$", re.I
)  # RFC 2606
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?\(?\d{1,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}"  # +44 20 7946 0958
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"  # (555) 867-5309
    r"|\d{3}[.-]\d{3,4}[.-]\d{4})(?!\w)"  # 555-867-5309
)
TEXT_CHECKS = {  # code: (pattern, what, needs non-ASCII text)
    "bad_encoding": (REPLACEMENT, "U+FFFD replacement characters (text lost to undecodable bytes)", True),
    "mojibake": (MOJIBAKE, "mojibake (UTF-8 read as Latin-1, e.g. 'Ã©' for 'é')", True),
    "control_chars": (CONTROL, "control characters", False),
    "invisible_chars": (INVISIBLE, "invisible characters (zero-width, bidi controls, BOM)", True),
}
PII_CHECKS = {"pii_email": (EMAIL, "e-mail addresses", False), "pii_phone": (PHONE, "phone numbers", False)}

DIGIT = re.compile(r"\d")


def text_findings(a: Flat, pii: bool) -> list[Finding]:
    checks = {**TEXT_CHECKS, **(PII_CHECKS if pii else {})}
    hits: dict[tuple[int, str], list[tuple[str, str]]] = {}  # (split, code) -> [(where, snippet)]
    for i, ex in enumerate(a.examples):
        for s in example_strings(ex):
            ascii_only = s.isascii()
            for code, (pattern, _, non_ascii) in checks.items():
                if (non_ascii and ascii_only) or (code == "pii_email" and "@" not in s):
                    continue  # cheap pre-checks: most text is ASCII without '@'
                if code == "pii_phone" and not DIGIT.search(s):
                    continue
                m = pattern.search(s)
                if code == "pii_email":  # documentation addresses (user@example.com) are not personal data
                    m = next((x for x in pattern.finditer(s) if not RESERVED_DOMAIN.search(x.group())), None)
                if m:
                    found = hits.setdefault((int(a.split_of[i]), code), [])
                    if not found or found[-1][0] != ex.source:
                        found.append((ex.source, s[max(0, m.start() - 30) : m.end() + 30]))
    out = []
    for (k, code), items in sorted(hits.items(), key=lambda kv: (kv[0][0], list(checks).index(kv[0][1]))):
        what = f"{len(items):,} rows with {checks[code][1]}"
        examples = [{"rows": [w], "text": repr(t)} for w, t in items]
        out.append(finding(code, a.names[k], what, [w for w, _ in items], examples))
    return out
