"""The GPU check's shared part: its outcomes (Skip, Failed) and the helpers every step uses (run the
CLI into the step's log, train, kill at a step, read losses). What the check does and how to run it:
bench/gpu_check.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Skip(Exception):
    """The step cannot run here; the message says why."""


class Failed(Exception):
    """The step ran and what it checks does not hold."""


@dataclass
class CheckBase:
    """Where a check writes and what it has prepared, and the helpers every step uses."""

    out: Path
    dry: bool
    work: Path
    jpegs: Path | None = None
    fail_step: str = ""  # rehearsal: this step's runs get an injected training fault
    current: str = ""
    results: list[dict] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.out / f"{self.current}.txt"  # each step's raw output, under the step's name

    def cli(self, *args: str, env: dict | None = None, expect_ok: bool = True,
            script: str = "") -> subprocess.CompletedProcess:
        """Run `python -m pipeline ARGS` (or `python SCRIPT ARGS`); output appended to the step's log."""
        proc = subprocess.run([sys.executable, *([script] if script else ["-m", "pipeline"]), *args],
                              capture_output=True, text=True, env=self.env(env), cwd=REPO, timeout=900)
        with open(self.log_path, "a") as log:
            log.write(f"$ {script or 'pipeline'} {' '.join(args)}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}]\n")
        if expect_ok and proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise Failed(f"exit {proc.returncode}: {tail[:300]}")
        return proc

    def env(self, extra: dict | None = None) -> dict:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
        if self.current == self.fail_step:
            env["PIPELINE_FAULT_RAISE_AT_STEP"] = "0"  # pipeline/faults.py: raise before the first step
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
        return env

    def train(self, run: str, *overrides: str, env: dict | None = None) -> dict:
        run_dir = self.work / run
        self.cli("train", *overrides, f"trainer.run_dir={run_dir}", "logging.progress=lines",
                 "logging.wandb.mode=disabled", env=env)
        return json.loads((run_dir / "summary.json").read_text())

    def kill_at_step(self, run: str, step: int, *overrides: str) -> None:
        """Start a training run that stalls once `step` steps are done (fault hook), then SIGKILL it: a
        real kill -9 at a known step, whatever the machine's speed."""
        run_dir = self.work / run
        args = [sys.executable, "-m", "pipeline", "train", *overrides, f"trainer.run_dir={run_dir}",
                "logging.progress=lines", "logging.wandb.mode=disabled"]
        with open(self.log_path, "a") as log:
            log.write(f"$ pipeline train {' '.join(args[4:])}  (SIGKILL before step {step})\n")
            log.flush()
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                    env=self.env({"PIPELINE_FAULT_STALL_AT_STEP": str(step)}))
            deadline = time.time() + 600
            metrics = run_dir / "metrics.jsonl"
            while time.time() < deadline and proc.poll() is None:
                rows = metrics.read_text().splitlines() if metrics.exists() else []
                if any(f'"step": {step},' in r for r in rows):  # text match: a row may be half-written
                    time.sleep(1.0)  # the loop is now asleep in the stall hook before `step`
                    break
                time.sleep(0.2)
            if proc.poll() is not None:
                raise Failed(f"the run to be killed ended by itself (exit {proc.returncode})")
            proc.kill()
            proc.wait()
            log.write(f"[killed with SIGKILL, exit {proc.returncode}]\n")

    def losses(self, run: str) -> list[float]:
        rows = [json.loads(line) for line in (self.work / run / "metrics.jsonl").read_text().splitlines()]
        return [r["train/loss"] for r in rows if "train/loss" in r]

    @property
    def device_overrides(self) -> list[str]:
        return ["trainer.device=cpu"] if self.dry else ["trainer.device=cuda"]

    def small_model(self, steps: int, dry_batch: int = 16) -> list[str]:
        """A quick synthetic job: ResNet-18 at 224 px, batch 64 on a GPU; ResNet-20 at 32 px on CPU."""
        if self.dry:
            return ["model.name=resnet20", "data.image_size=32", f"data.batch_size={dry_batch}",
                    "data.dataset=synthetic", f"data.synthetic_samples={dry_batch * steps}", "trainer.epochs=1",
                    *self.device_overrides]
        return ["model.name=resnet18", "data.image_size=224", "data.batch_size=64", "data.dataset=synthetic",
                f"data.synthetic_samples={64 * steps}", "trainer.epochs=1", "model.num_classes=1000",
                *self.device_overrides]
