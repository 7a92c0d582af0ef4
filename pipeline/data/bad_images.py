"""The one rule for unreadable images, shared by the torchvision and DALI backends.

data.on_bad_image=fail stops with one line naming the file; =skip warns once per file and
replaces it by the next file of the split, wrapping around (the same index walk in both
backends, so both count the same replacements).
"""
from __future__ import annotations

import sys
from typing import Iterator

from pipeline.data.types import DataError

SKIP_HINT = "(set data.on_bad_image=skip to skip such files)"


def failure_message(path: str, problem: str) -> str:
    return f"cannot read image {path}: {problem} {SKIP_HINT}"


def report(path: str, problem: str, policy: str) -> None:
    """Apply data.on_bad_image to one unreadable file: raise under fail, warn under skip."""
    if policy == "fail":
        raise DataError(failure_message(path, problem)) from None
    print(f"warning: skipping unreadable image {path}: {problem}", file=sys.stderr, flush=True)


def candidates(index: int, count: int) -> Iterator[int]:
    """The file at `index`, then its replacements in order: the next files of the split, wrapping."""
    for attempt in range(count):
        yield (index + attempt) % count


def replacement(index: int, count: int, bad: set[int]) -> int:
    """The first candidate for `index` that is not known to be bad."""
    for candidate in candidates(index, count):
        if candidate not in bad:
            return candidate
    raise DataError(f"no readable image among the {count} of this split")
