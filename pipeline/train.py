"""The training job: build -> resume -> epochs of (train, validate, checkpoint) -> summary."""
from __future__ import annotations

import json
import math
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import checkpoint as ckpt
from pipeline import faults
from pipeline import distributed as dist_utils
from pipeline.config import RootConfig, to_dict, to_yaml
from pipeline.data import DataBundle, Placement, build_data
from pipeline.engine import TorchEngine, wrap_model
from pipeline.metrics import MetricsLog, Progress, format_duration, read_metrics
from pipeline.models import build_model, count_parameters
from pipeline.optim import LRSchedule, build_optimizer, scaled_lr
from pipeline.runtime import Runtime, agree_on_numerics, configure_threads, make_runtime

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving a checkpoint; resume to go on


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in `epoch`
    global_step: int = 0
    best_top1: float = -1.0
    last_val: dict = field(default_factory=dict)
    img_per_sec: list = field(default_factory=list)
    wandb_run_id: str = ""
    train_seconds: float = 0.0  # accumulated over attempts (resume keeps counting)
    # Per log window: the share of wall time the loop spent waiting for the next batch. On a GPU
    # the host runs ahead of the device, so time blocked on the loader is time the GPU may starve.
    data_wait: list = field(default_factory=list)


class StopSignal:
    """SIGTERM/SIGUSR1 (preemption warning, torchrun shutdown) ask for a checkpoint at the next step."""

    def __init__(self) -> None:
        self.requested = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = signum

    def agreed(self, world_size: int, device: torch.device) -> bool:
        """All ranks must stop at the same step: take the max of the flags (one tiny all-reduce)."""
        if world_size == 1:
            return bool(self.requested)
        flag = torch.tensor([float(bool(self.requested))], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def environment_facts(rt: Runtime, data: DataBundle) -> dict:
    import timm
    import torchvision

    return {"git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "device": rt.device_name(),
            "device_count": torch.cuda.device_count() if rt.device.type == "cuda" else 0,
            "world_size": rt.world.world_size, "launcher": rt.world.launcher, "engine": rt.engine,
            "precision": rt.precision, "channels_last": rt.channels_last, "numerics_reason": rt.numerics_reason,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "data_backend": data.backend,
            "host": platform.node()}


def make_loss(cfg: RootConfig, num_classes: int):
    """Returns (mixup_fn or None, loss(logits, targets))."""
    if cfg.data.mixup > 0 or cfg.data.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=cfg.data.mixup, cutmix_alpha=cfg.data.cutmix,
                      label_smoothing=cfg.optim.label_smoothing, num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)


def set_train_mode(model: torch.nn.Module, frozen_bn: bool) -> None:
    model.train()
    if frozen_bn:  # statistics fixed: the per-sample computation no longer depends on the batch
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def replica_checksum(module: torch.nn.Module, device: torch.device) -> bool:
    """True when every rank holds bit-identical parameters (compares exact fp64 sums across ranks)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return True
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
        weights = torch.arange(len(flat), dtype=torch.float64, device=flat.device)  # order-sensitive
        mine = torch.stack([flat.sum(), (flat * flat).sum(), (flat * weights).sum()]).to(device)
    gathered = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, rt: Runtime, prefix: str = "val") -> dict:
    """Top-1/top-5/loss over the whole split; each image counted once across ranks."""
    model.eval()
    totals = torch.zeros(4, device=rt.device, dtype=torch.float64)  # loss sum, top1, top5, count
    loader.set_epoch(0)
    for images, labels in loader:
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.use_autocast):
            logits = model(images)
        logits = logits.float()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        totals += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                               hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                               torch.tensor(float(len(labels)), device=rt.device, dtype=torch.float64)])
    dist_utils.all_reduce_sum(totals)
    loss_sum, top1, top5, count = totals.tolist()
    model.train()
    return {f"{prefix}/loss": loss_sum / max(count, 1), f"{prefix}/top1": 100 * top1 / max(count, 1),
            f"{prefix}/top5": 100 * top5 / max(count, 1), f"{prefix}/samples": int(count)}


class Trainer:
    def __init__(self, cfg: RootConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.run_dir = Path(cfg.trainer.run_dir)
        seed_everything(cfg.trainer.seed)  # same initial weights on every rank
        placement = Placement(rt.device, rt.channels_last, rt.world.rank, rt.world.world_size)
        self.data = build_data(cfg.data, placement, cfg.trainer.seed, cfg.model.num_classes)
        model = build_model(cfg.model, cfg.model.num_classes or self.data.num_classes)
        self.num_params = count_parameters(model)
        model, bare = wrap_model(model, cfg, rt)
        self.accumulation = cfg.optim.accumulation
        self.steps_per_epoch = max(1, self.data.train.steps_per_epoch() // self.accumulation)
        global_batch = cfg.data.batch_size * rt.world.world_size * self.accumulation
        self.base_lr = scaled_lr(cfg.optim, global_batch)
        optimizer = build_optimizer(bare, cfg.optim, self.base_lr, rt.device)
        if rt.engine == "deepspeed":
            from pipeline.deepspeed_engine import DeepSpeedEngine

            self.engine = DeepSpeedEngine(bare, optimizer, cfg, rt)
        else:
            cuda_graphs = (cfg.trainer.compile and rt.device.type == "cuda"
                           and cfg.trainer.compile_mode in ("reduce-overhead", "max-autotune"))
            self.engine = TorchEngine(model, bare, optimizer, rt, cfg.optim.grad_clip, cuda_graphs)
        self.schedule = LRSchedule(optimizer, cfg.optim, self.steps_per_epoch, cfg.trainer.epochs)
        self.mixup, self.loss_fn = make_loss(cfg, self.data.num_classes)
        self.ema = None
        if cfg.trainer.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(bare, decay=cfg.trainer.ema_decay)
        self.state = TrainState()
        self.metrics = MetricsLog(self.run_dir, rt.is_main)
        self.total_steps = cfg.trainer.epochs * self.steps_per_epoch
        if cfg.trainer.max_steps > 0:
            self.total_steps = min(self.total_steps, cfg.trainer.max_steps)
        self.stop = StopSignal()
        self.nonfinite_windows = 0  # consecutive log windows with a non-finite loss

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """Everything but the engine's own state (model, optimizer, scaler), which it saves itself."""
        s = self.state
        return {"scheduler": self.schedule.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "rng": ckpt.rng_state(),
                "progress": {"epoch": s.epoch, "step_in_epoch": s.step_in_epoch, "global_step": s.global_step,
                             "best_top1": s.best_top1, "train_seconds": s.train_seconds,
                             "img_per_sec": list(s.img_per_sec[-50:]), "data_wait": list(s.data_wait[-50:]),
                             "last_val": dict(s.last_val)},
                "wandb_run_id": s.wandb_run_id, "config": to_dict(self.cfg)}

    def save(self) -> None:
        try:
            self.engine.save_checkpoint(self.run_dir, self.state.global_step, self.checkpoint_state(),
                                        self.cfg.trainer.keep_checkpoints)
        except OSError as exc:
            where = ckpt.checkpoint_dir(self.run_dir)
            if self.cfg.trainer.on_checkpoint_error == "stop":
                raise RuntimeError(f"checkpoint write failed at step {self.state.global_step} in {where}: {exc}; "
                                   "previous checkpoint kept") from None
            print(f"warning: checkpoint write failed at step {self.state.global_step} in {where}: {exc}; "
                  "previous checkpoint kept, training continues", file=sys.stderr, flush=True)
            dist_utils.barrier()

    def resume(self) -> None:
        if self.cfg.trainer.resume == "never":
            return
        found = self.engine.load_checkpoint(self.run_dir, self.cfg.trainer.resume)
        if found is None:
            return
        path, state = found
        self.schedule.load_state_dict(state["scheduler"])
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        p = state["progress"]
        self.state = TrainState(p["epoch"], p["step_in_epoch"], p["global_step"], p["best_top1"],
                                p.get("last_val", {}), list(p.get("img_per_sec", [])),
                                state.get("wandb_run_id", ""), p.get("train_seconds", 0.0),
                                list(p.get("data_wait", [])))
        self.metrics.truncate_after(self.state.global_step)
        self.log_line(f"resumed from {path} (epoch {p['epoch'] + 1}, step {p['global_step']})")

    def log_line(self, text: str) -> None:
        if self.rt.is_main:
            print(text, flush=True)

    # -- the loop ----------------------------------------------------------------------------
    def train_one_epoch(self, progress: Progress) -> bool:
        """Returns False when the run must stop early (max_steps or a stop signal)."""
        cfg, s, rt = self.cfg, self.state, self.rt
        loader = self.data.train
        loader.set_epoch(s.epoch, s.step_in_epoch * self.accumulation)
        batches = iter(loader)
        loss_sum = torch.zeros((), device=rt.device)  # accumulated on device: no host sync per step
        hits = torch.zeros((), device=rt.device, dtype=torch.long)  # correct top-1 on this rank's batches
        loss_count, window_start, window_images, local_images = 0, time.perf_counter(), 0, 0
        data_wait = 0.0

        def counted_loss(logits, target):
            labels_ = target.argmax(1) if target.ndim > 1 else target  # mixup targets are soft
            hits.add_((logits.detach().argmax(1) == labels_).sum())
            return self.loss_fn(logits, target)

        while s.step_in_epoch < self.steps_per_epoch:
            if s.global_step >= self.total_steps:
                return False
            self.schedule.set_step(s.global_step)
            faults.before_step(s.global_step)
            for micro in range(self.accumulation):
                wait_start = time.perf_counter()
                images, labels = next(batches)
                faults.slow_batch()
                data_wait += time.perf_counter() - wait_start
                if self.mixup is not None:
                    images, labels = self.mixup(images, labels)
                loss_fn = counted_loss
                if faults.nan_loss(s.global_step):  # injected divergence: NaN flows into the gradients
                    loss_fn = lambda out, target: counted_loss(out, target) * float("nan")  # noqa: E731
                loss = self.engine.micro_step(images, labels, loss_fn, micro == self.accumulation - 1,
                                              self.accumulation)
                loss_sum += loss
                loss_count += 1
                window_images += images.shape[0] * rt.world.world_size
                local_images += images.shape[0]
            if self.ema is not None:
                self.ema.update(self.engine.module, step=s.global_step)
            s.step_in_epoch += 1
            s.global_step += 1
            progress.advance(s.global_step)

            at_log = s.global_step % cfg.trainer.log_every == 0 or s.step_in_epoch == self.steps_per_epoch
            if at_log:
                loss_total, hit_total = torch.stack([loss_sum, hits.to(loss_sum.dtype)]).tolist()  # the one host sync
                mean_loss = loss_total / loss_count
                elapsed = time.perf_counter() - window_start
                img_per_sec = window_images / max(elapsed, 1e-9)
                s.train_seconds += elapsed
                self.check_finite(mean_loss)
                s.img_per_sec.append(img_per_sec)
                s.data_wait.append(data_wait / max(elapsed, 1e-9))
                self.metrics.log({"step": s.global_step, "epoch": s.epoch + s.step_in_epoch / self.steps_per_epoch,
                                  "train/loss": mean_loss, "train/top1": 100.0 * hit_total / max(1, local_images),
                                  "train/lr": self.schedule.current_lr(),
                                  "train/img_per_sec": img_per_sec, "train/data_wait": s.data_wait[-1]})
                progress.train_line(s.epoch, cfg.trainer.epochs, s.step_in_epoch, self.steps_per_epoch,
                                    s.global_step, mean_loss, self.schedule.current_lr(), img_per_sec, s.data_wait[-1])
                loss_sum.zero_()
                hits.zero_()
                loss_count, window_start, window_images, local_images = 0, time.perf_counter(), 0, 0
                data_wait = 0.0
            every = cfg.trainer.checkpoint_every
            if every and s.global_step % every == 0 and s.step_in_epoch < self.steps_per_epoch:
                if self.nonfinite_windows == 0:  # never checkpoint a diverged state
                    self.save()
            if (rt.world.world_size == 1 or at_log) and self.stop.agreed(rt.world.world_size, rt.device):
                self.save()
                return False
        return True

    def check_finite(self, mean_loss: float) -> None:
        if math.isfinite(mean_loss):
            self.nonfinite_windows = 0
            return
        self.nonfinite_windows += 1
        if self.rt.precision == "fp16":
            return  # the GradScaler already skipped those steps and lowered the scale
        if self.nonfinite_windows >= self.cfg.trainer.nonfinite_patience:
            raise NonFiniteLossError(
                f"loss is {mean_loss} for {self.nonfinite_windows} consecutive log intervals at step {self.state.global_step}; "
                f"stopping (last good checkpoint kept in {ckpt.checkpoint_dir(self.run_dir)})")

    def validate(self) -> dict:
        self.engine.sync_buffers()
        metrics = evaluate(self.engine.module, self.data.val, self.rt)
        if self.ema is not None:
            metrics.update(evaluate(self.ema.module, self.data.val, self.rt, prefix="val_ema"))
        set_train_mode(self.engine.model, self.cfg.model.frozen_bn)
        return metrics

    def fit(self) -> dict:
        cfg, s = self.cfg, self.state
        progress = Progress(cfg.logging.progress, self.rt.is_main, self.total_steps, s.global_step)
        progress.advance(s.global_step)
        set_train_mode(self.engine.model, cfg.model.frozen_bn)
        interrupted = False
        try:
            while s.epoch < cfg.trainer.epochs and s.global_step < self.total_steps:
                if not self.train_one_epoch(progress):
                    interrupted = bool(self.stop.requested)
                    break
                last = s.epoch + 1 == cfg.trainer.epochs
                if last or (s.epoch + 1) % cfg.trainer.eval_every == 0:
                    s.last_val = self.validate()
                    s.best_top1 = max(s.best_top1, s.last_val["val/top1"])
                    self.metrics.log({"step": s.global_step, "epoch": s.epoch + 1, **s.last_val})
                    progress.message(f"epoch {s.epoch + 1}/{cfg.trainer.epochs} val top1 {s.last_val['val/top1']:.2f} "
                                     f"top5 {s.last_val['val/top5']:.2f} loss {s.last_val['val/loss']:.4f} "
                                     f"({s.last_val['val/samples']} images)")
                s.epoch += 1
                s.step_in_epoch = 0
                if self.nonfinite_windows == 0:  # never checkpoint a diverged state
                    self.save()
            if not interrupted and s.global_step >= self.total_steps and not s.last_val:
                s.last_val = self.validate()  # stopped by max_steps before any validation
                s.best_top1 = max(s.best_top1, s.last_val["val/top1"])
                self.metrics.log({"step": s.global_step, "epoch": s.epoch + s.step_in_epoch / self.steps_per_epoch,
                                  **s.last_val})
                self.save()
        finally:
            progress.close()
        return self.summary("interrupted" if interrupted else "completed")

    def summary(self, status: str) -> dict:
        s = self.state
        rates = s.img_per_sec[1:] or s.img_per_sec  # the first window includes warm-up
        waits = s.data_wait[1:] or s.data_wait
        summary = {"status": status, "model": self.cfg.model.name, "parameters": self.num_params,
                   "best/val/top1": s.best_top1 if s.best_top1 >= 0 else None,
                   "final/val/top1": s.last_val.get("val/top1"), "final/val/top5": s.last_val.get("val/top5"),
                   "val/samples": s.last_val.get("val/samples"),
                   "train/img_per_sec": statistics.median(rates) if rates else None,
                   "train/data_wait": round(statistics.median(waits), 4) if waits else None,
                   "epochs": s.epoch + s.step_in_epoch / self.steps_per_epoch, "steps": s.global_step,
                   "train_seconds": round(s.train_seconds, 2),
                   "replaced_images": getattr(self.data.train, "replaced_images", 0),
                   "fp16_skipped_steps": (int(self.engine.skipped_steps) if self.rt.precision == "fp16"
                                          and self.engine.skipped_steps is not None else None),
                   "replicas_identical": replica_checksum(self.engine.module, self.rt.device),
                   "peak_memory_gib": (round(torch.cuda.max_memory_allocated(self.rt.device) / 2**30, 2)
                                       if self.rt.device.type == "cuda" else None)}
        return summary


def run_training(cfg: RootConfig) -> tuple[dict, int]:
    """Entry point of `pipeline train`: returns (summary, exit code)."""
    world = dist_utils.world_info_from_env()
    configure_threads(cfg.trainer, world)
    rt = make_runtime(cfg.trainer, world)
    # DDP and DeepSpeed need a process group even for one process.
    dist_utils.init_process_group(world, rt.device, cfg.distributed.backend, cfg.distributed.timeout_s,
                                  always=rt.engine != "single")
    rt = agree_on_numerics(rt)
    start = time.time()
    try:
        run_dir = Path(cfg.trainer.run_dir)
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(to_yaml(cfg))
        trainer = Trainer(cfg, rt)
        trainer.resume()
        env = environment_facts(rt, trainer.data)
        tracker = None
        if rt.is_main:
            (run_dir / "environment.json").write_text(json.dumps(env, indent=2))
            if cfg.logging.wandb.mode != "disabled":
                from pipeline.tracking import WandbTracker, run_id_for

                trainer.state.wandb_run_id = run_id_for(run_dir, trainer.state.wandb_run_id)
                tracker = WandbTracker(cfg, run_dir, trainer.state.wandb_run_id, env)
                trainer.metrics.sinks.append(tracker)
            trainer.log_line(f"model {cfg.model.name} ({trainer.num_params:,} parameters) on {env['device']}, "
                             f"{rt.precision}{' channels_last' if rt.channels_last else ''} ({rt.numerics_reason}), engine {rt.engine}, world {world.world_size}, data {trainer.data.backend} "
                             f"({trainer.data.train.num_samples} train / {trainer.data.val.num_samples} val images)"
                             + (f", W&B {tracker.mode} run {trainer.state.wandb_run_id}" if tracker else ""))
        try:
            summary = trainer.fit()
        except BaseException:
            if tracker is not None:
                tracker.run.finish(exit_code=1)
            raise
        summary.update({"wall_seconds": round(time.time() - start, 2), "device": env["device"],
                        "world_size": world.world_size, "data_backend": trainer.data.backend,
                        "precision": rt.precision, "channels_last": rt.channels_last,
                        "numerics_reason": rt.numerics_reason, "engine": rt.engine,
                        "device_hours": round(summary["train_seconds"] * world.world_size / 3600, 4),
                        "wandb_run_id": trainer.state.wandb_run_id or None})
        if rt.is_main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            if tracker is not None:
                newest = ckpt.list_checkpoints(run_dir)
                tracker.finish(summary, newest[0] if newest else None, summary["status"] == "interrupted")
            verb = "stopped (checkpoint saved; rerun the same command to resume)" if summary["status"] == "interrupted" else "finished"
            top1 = summary["final/val/top1"]
            trainer.log_line(f"{verb} in {format_duration(summary['wall_seconds'])}: "
                             + (f"val top1 {top1:.2f}%, " if top1 is not None else "")
                             + f"run directory {run_dir.resolve()}")
        return summary, (EXIT_INTERRUPTED if summary["status"] == "interrupted" else 0)
    finally:
        dist_utils.shutdown()


__all__ = ["run_training", "evaluate", "read_metrics", "EXIT_INTERRUPTED", "NonFiniteLossError"]
