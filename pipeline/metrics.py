"""Run outputs on rank 0: metrics.jsonl (keys as in W&B), console progress lines, summary.json."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricsLog:
    """Append-only JSON lines; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.sinks: list = []  # extra sinks (e.g. W&B) with a .log(record) method

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint, which the resumed run logs again."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.log(record)

    def alert(self, title: str, text: str) -> None:
        """A warning line in the log (stderr) and an alert in each sink that takes alerts (W&B)."""
        if not self.enabled:
            return
        print(f"warning: {text}", file=sys.stderr, flush=True)
        for sink in self.sinks:
            if hasattr(sink, "alert"):
                sink.alert(title, text)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """A tqdm bar on a terminal, plain lines otherwise (Slurm logs), nothing off rank 0."""

    def __init__(self, mode: str, enabled: bool, total_steps: int, start_step: int = 0) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "none"
        self.total_steps = total_steps
        self.start = time.perf_counter()
        self.start_step = start_step
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True) if self.mode == "bar" else None

    def advance(self, global_step: int) -> None:
        if self.bar is not None:
            self.bar.n = global_step
            self.bar.refresh()

    def train_line(self, epoch: int, epochs: int, step: int, steps: int, global_step: int,
                   loss: float, lr: float, img_per_sec: float, data_wait: float = 0.0) -> None:
        elapsed = time.perf_counter() - self.start
        done = max(1, global_step - self.start_step)
        eta = elapsed / done * (self.total_steps - global_step)
        text = (f"epoch {epoch + 1}/{epochs} step {step}/{steps} loss {loss:.4f} lr {lr:.4g} "
                f"{img_per_sec:.0f} img/s data wait {data_wait:.0%} eta {format_duration(eta)}")
        self.message(text, bar_postfix=True)

    def message(self, text: str, bar_postfix: bool = False) -> None:
        if self.mode == "none":
            return
        if self.bar is not None:
            if bar_postfix:
                self.bar.set_postfix_str(text.split(" ", 4)[-1])
            else:
                self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
