"""A small document model rendered twice: Markdown (plots as PNG files beside it) and one self-contained
HTML file (plots embedded as base64 PNGs, inline CSS, no scripts, nothing fetched: readable offline)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Doc:
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str, level: str = "info") -> None:
        """A highlighted sentence: level ok, info or warn."""
        self.blocks.append(("note", text, level))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", header, [[str(c) for c in r] for r in rows]))

    def image(self, name: str, png: bytes, alt: str) -> None:
        self.blocks.append(("img", name, png, alt))

    def images(self, items: list[tuple[str, bytes, str]]) -> None:
        """Several plots side by side in HTML (one after another in Markdown): (name, png, alt) each."""
        self.blocks.append(("imgs", items))

    def details(self, summary: str, text: str) -> None:
        self.blocks.append(("details", summary, text))


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Doc, image_dir: str = "report_files") -> tuple[str, dict[str, bytes]]:
    """Markdown text, and the PNG files it links to (relative paths under ``image_dir``)."""
    out, files = [f"# {doc.title}", ""], {}
    icons = {"ok": "✅", "info": "ℹ️", "warn": "⚠️"}
    for b in doc.blocks:
        kind = b[0]
        if kind == "h2":
            out += [f"## {b[1]}", ""]
        elif kind == "h3":
            out += [f"### {b[1]}", ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "note":
            out += [f"> {icons[b[2]]} {b[1]}", ""]
        elif kind == "ul":
            out += [f"- {x}" for x in b[1]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in b[1]) + " |")
            out.append("|" + "---|" * len(b[1]))
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b[2]]
            out.append("")
        elif kind in ("img", "imgs"):
            for name, png, alt in [b[1:]] if kind == "img" else b[1]:
                path = f"{image_dir}/{name}.png"
                files[path] = png
                out += [f"![{alt}]({path})", ""]
        elif kind == "details":
            out += [
                f"<details><summary>{b[1]}</summary>",
                "",
                "```",
                b[2].rstrip(),
                "```",
                "",
                "</details>",
                "",
            ]
    return "\n".join(out), files


CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #4c72b0;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f3f5f9}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;display:block;margin:.8em 0;border:1px solid #eee}
.note{padding:.6em .9em;border-radius:4px;margin:.8em 0}.ok{background:#e8f5e9;border-left:4px solid #43a047}
.info{background:#eef3fb;border-left:4px solid #4c72b0}.warn{background:#fff4e5;border-left:4px solid #f57c00}
.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.row img{max-width:48%}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}details{margin:.8em 0}
"""


def _img(png: bytes, alt: str) -> str:
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )


def to_html(doc: Doc) -> str:
    """One self-contained HTML page."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(doc.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(doc.title)}</h1>",
    ]
    for b in doc.blocks:
        kind = b[0]
        if kind in ("h2", "h3"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "note":
            out.append(f'<div class="note {b[2]}">{e(b[1])}</div>')
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            out.append(_img(b[2], b[3]))
        elif kind == "imgs":
            out.append('<div class="row">' + "".join(_img(png, alt) for _, png, alt in b[1]) + "</div>")
        elif kind == "details":
            out.append(f"<details><summary>{e(b[1])}</summary><pre>{e(b[2])}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out)


def write(doc: Doc, folder: Path, stem: str = "report") -> tuple[Path, Path]:
    """Write ``stem.md`` (+ ``stem_files/*.png``) and the self-contained ``stem.html`` into ``folder``."""
    folder = Path(folder)
    md, files = to_markdown(doc, f"{stem}_files")
    for rel, png in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(png)
    (folder / f"{stem}.md").write_text(md, encoding="utf-8")
    (folder / f"{stem}.html").write_text(to_html(doc), encoding="utf-8")
    return folder / f"{stem}.md", folder / f"{stem}.html"
