"""Every config key with its type, default and documentation, read from the schema itself: the
comments on and above each field in schema.py (so `--help` cannot drift from the code)."""
from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from dataclasses import dataclass

from pipeline.config.schema import RootConfig


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, e.g. optim.lr
    type: str
    default: object
    doc: str


def _field_comments(cls: type) -> dict[str, str]:
    """field name -> its trailing comment, or the comment block right above it."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    docs = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if not line.startswith("    ") or line.startswith("     ") or not name.isidentifier():
            continue
        above, previous = [], number - 1
        while previous in comments and lines[previous - 1].strip().startswith("#"):
            above.insert(0, comments[previous])
            previous -= 1
        trailing = comments.get(number, "") if not line.strip().startswith("#") else ""
        docs[name] = " ".join(above + ([trailing] if trailing else []))
    return docs


def describe(cls: type = RootConfig, prefix: str = "") -> list[KeyDoc]:
    out = []
    defaults, docs = cls(), _field_comments(cls)
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, kind in hints.items():
        value = getattr(defaults, name)
        if dataclasses.is_dataclass(value):
            out += describe(type(value), f"{prefix}{name}.")
        else:
            out.append(KeyDoc(f"{prefix}{name}", str(kind), value, docs.get(name, "")))
    return out


def help_text() -> str:
    """Grouped by section, for `pipeline train --help` and friends."""
    lines, section = ["config keys (set with key=value, or in the YAML given to --config):"], None
    for item in describe():
        top = item.key.rpartition(".")[0]
        if (top or "top level") != section:
            section = top or "top level"
            lines.append(f"\n  {section}:")
        default = repr(item.default) if isinstance(item.default, str) else item.default
        # The dotted name on every line: what users type (data.auto_augment=...) and grep for.
        lines.append(f"    {item.key} ({item.type}, default {default})" + (f": {item.doc}" if item.doc else ""))
    return "\n".join(lines)


