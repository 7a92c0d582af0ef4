"""Warnings a run gives while it trains, without stopping it, and the error lines that name a
failing step."""
from __future__ import annotations

import contextlib
import math
import re


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


@contextlib.contextmanager
def naming_the_step_of_a_dead_loader_worker(state, loader):
    """torch's DataLoader reports a dead worker ("DataLoader worker (pid N) is killed by signal")
    from its SIGCHLD handler, wherever the loop is, and a failed DALI pipeline names only its own
    step: add the global step, so a restart's log explains itself. When the handler's error lands
    inside a checkpoint write, torch.save's own error ("unexpected pos") comes out instead (seen
    once in CI): the loader is then asked whether a worker is dead."""
    try:
        yield
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if re.search(r"DataLoader worker \(pid", first):  # not "Caught DataError in DataLoader worker process"
            raise RuntimeError(f"data loader worker died at step {state.global_step}: {first}") from None
        if first.startswith("DALI pipeline failed"):
            raise RuntimeError(f"{first} (global step {state.global_step})") from None
        if dead := getattr(loader, "dead_worker", lambda: "")():
            raise RuntimeError(f"data loader worker died at step {state.global_step}: {dead} ({first})") from None
        raise
