"""Weights & Biases tracking on rank 0: grouped, resume-safe, never interactive.

mode auto: online when an API key or a netrc login for W&B exists, else offline (compute nodes
often have no internet; `wandb sync` uploads later). Online (chosen or asked for) first checks in
a few seconds that the service accepts a connection; when it does not, the run logs offline with
one warning line saying how to sync it: a dashboard never costs the training run. The run id is generated once per run
directory, stored in `wandb_run_id.txt` and in every checkpoint, so a resumed or requeued job
continues the same W&B run (resume="allow"), and two jobs never share one.
"""
from __future__ import annotations

import netrc
import os
import secrets
import socket
import string
import sys
from pathlib import Path
from urllib.parse import urlparse

from pipeline.config import RootConfig, to_dict

ID_FILE = "wandb_run_id.txt"
# Summary metrics W&B's run table sorts by.
SUMMARIES = {"val/top1": "max,last", "val/top5": "max,last", "val/loss": "min,last",
             "train/loss": "min,last", "train/img_per_sec": "mean", "train/data_wait": "mean"}


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        auth = None
    return "online" if auth else "offline"


def unreachable(timeout_s: float = 5.0) -> str:
    """"" when W&B's server (WANDB_BASE_URL, default api.wandb.ai) accepts a TCP connection within
    timeout_s, else why not. Without this, wandb.init waits minutes for its own timeouts."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return ""
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def run_id_for(run_dir: Path, from_checkpoint: str) -> str:
    path = run_dir / ID_FILE
    if from_checkpoint:
        run_id = from_checkpoint
    elif path.exists():
        run_id = path.read_text().strip()
    else:
        alphabet = string.ascii_lowercase + string.digits
        run_id = "".join(secrets.choice(alphabet) for _ in range(12))  # random: no collision across jobs
    path.write_text(run_id + "\n")
    return run_id


class WandbTracker:
    """A MetricsLog sink. Create only on rank 0 and only when the mode is not disabled."""

    def __init__(self, cfg: RootConfig, run_dir: Path, run_id: str, environment: dict) -> None:
        import wandb

        w = cfg.logging.wandb
        self.mode = resolve_mode(w.mode)
        if self.mode == "online" and (problem := unreachable()):
            self.mode = "offline"  # the same run id: the synced run is this run
            print(f"warning: W&B is unreachable ({problem}); logging offline to {run_dir / 'wandb'}, "
                  f"upload later with `wandb sync {run_dir / 'wandb'}/offline-run-*`", file=sys.stderr, flush=True)
        self.cfg = cfg
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=w.project, entity=w.entity or None, group=w.group or None, job_type=w.job_type,
            tags=list(w.tags) or None, notes=w.notes or None, id=run_id, resume="allow", dir=str(run_dir),
            mode=self.mode, name=run_dir.name,
            config={**to_dict(cfg), "environment": environment},
            settings=wandb.Settings(console="off", x_disable_stats=False, init_timeout=120))
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        for key, summary in SUMMARIES.items():
            self.run.define_metric(key, step_metric="step", summary=summary)

    def log(self, record: dict) -> None:
        self.run.log(record)

    def alert(self, title: str, text: str) -> None:
        """A W&B alert (e-mail/Slack as the user set it up online; a record in an offline run)."""
        import wandb

        self.run.alert(title=title, text=text, level=wandb.AlertLevel.WARN)

    def finish(self, summary: dict, checkpoint: Path | None, interrupted: bool) -> None:
        for key in ("best/val/top1", "final/val/top1", "train/img_per_sec", "train/data_wait", "device_hours",
                    "wall_seconds", "global_batch", "peak_lr", "warmup_epochs", "rescales"):
            if summary.get(key) not in (None, []):
                self.run.summary[key] = summary[key]
        if self.cfg.logging.wandb.log_checkpoints and checkpoint is not None and checkpoint.exists():
            import wandb

            artifact = wandb.Artifact(f"{self.run.id}-checkpoint", type="model",
                                      metadata={"step": summary.get("steps")})
            if checkpoint.is_dir():  # a DeepSpeed checkpoint: the tag folder with its shards
                artifact.add_dir(str(checkpoint), name=checkpoint.name)
            else:
                artifact.add_file(str(checkpoint))
            self.run.log_artifact(artifact)
        if interrupted:
            self.run.mark_preempting()
        self.run.finish(exit_code=75 if interrupted else 0)
