"""Warnings a run gives while it trains, without stopping it."""
from __future__ import annotations

import math


def val_at_chance(val_top1: float, train_top1: float, classes: int, samples: int) -> str | None:
    """The warning line when validation sits at chance while training learns, else None.

    At chance: val top-1 at most 1/classes plus three binomial standard deviations of a guesser's
    top-1 over `samples` images (the noise of a small val split). Learning: train top-1 (the mean of
    the log windows since the last validation) at least 10 points above that line. Both at once
    mostly means the val labels name other classes than the train labels (a shifted or permuted
    numbering).
    """
    if classes < 2 or samples < 1:
        return None
    p = 1.0 / classes
    chance, noise = 100.0 * p, 300.0 * math.sqrt(p * (1 - p) / samples)
    line = chance + noise
    if val_top1 <= line and train_top1 >= line + 10:
        return (f"val top-1 at chance while train top-1 is {train_top1:.0f}%: do the labels of the two splits "
                f"mean the same classes? (val top-1 {val_top1:.2f}%, chance {chance:.2f}% + {noise:.2f} for "
                f"noise over {samples} images, {classes} classes)")
    return None
