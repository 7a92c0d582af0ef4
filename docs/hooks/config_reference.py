"""MkDocs hook: the configuration reference page, generated from pipeline/config/schema.py at build
time (the same source as `pipeline config --keys`), so the page cannot drift from the code."""
from __future__ import annotations


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    from pipeline.config.describe import describe

    lines, section = [], None
    for item in describe():
        top = item.key.rpartition(".")[0] or "top level"
        if top != section:
            section = top
            lines += ["", f"## {section}", "", "| key | type | default | what it does |", "|---|---|---|---|"]
        default = repr(item.default) if isinstance(item.default, str) else item.default
        lines.append(f"| `{item.key}` | {_cell(item.type)} | `{_cell(default)}` | {_cell(item.doc)} |")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page, **_) -> str:
    if page.file.src_uri == "config-reference.md":
        return markdown.replace("<!-- config-keys -->", reference_markdown())
    return markdown
