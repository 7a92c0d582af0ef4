"""The one "did you mean" helper: config keys, config values and model names use it."""
from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6, prefix: str = "") -> str:
    """"; did you mean 'X'?" for the closest candidate (written as prefix + X), or "" when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""
