"""Refresh the generated parts of README.md: the configuration reference and the benchmark tables.

python benchmarks/update_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

from tuneforge.config import describe

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    return text.replace(f"<!-- {name} -->", block)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = replace_block(text, "reference", describe())
    tables = [
        (RESULTS / f"{n}.md").read_text()
        for n in (
            "sft",
            "classification",
            "audit",
            "contention",
            "serve-fp32-s12",
            "serve",
            "dpo",
            "grpo",
        )
        if (RESULTS / f"{n}.md").exists()
    ]
    if tables:
        text = replace_block(text, "results", "\n\n".join(tables))
    readme.write_text(text)


if __name__ == "__main__":
    main()
