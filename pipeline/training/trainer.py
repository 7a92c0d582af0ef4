"""The Trainer: epochs of (train, validate, checkpoint) over one engine, resumable at any step."""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline import faults
from pipeline.config import RootConfig, to_dict
from pipeline.data import Placement, build_data
from pipeline.data.resolution import size_note, train_size
from pipeline.data.sampler import epoch_steps
from pipeline.engines import build_engine
from pipeline.metrics import MetricsLog, Progress
from pipeline.models import build_model, count_parameters
from pipeline.optim import LRSchedule, build_optimizer, scaled_lr, warmup_epochs_for
from pipeline.runtime import Runtime, StopSignal, seed_everything
from pipeline.trained import load_pretrained
from pipeline.training.elastic import Continuation
from pipeline.training.ema import build_ema
from pipeline.training.evaluate import evaluate, replica_checksum
from pipeline.training.loss import make_loss
from pipeline.training.guards import naming_the_step_of_a_dead_loader_worker, val_at_chance
from pipeline.training.position import RunPosition
from pipeline.training.state import LogWindow, TrainState


class NonFiniteLossError(RuntimeError):
    pass


def set_train_mode(model: torch.nn.Module, frozen_bn: bool) -> None:
    model.train()
    if frozen_bn:  # statistics fixed: the per-sample computation no longer depends on the batch
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


class Trainer:
    def __init__(self, cfg: RootConfig, rt: Runtime, continuation: Continuation | None = None) -> None:
        self.cfg, self.rt = cfg, rt
        self.continuation = continuation or Continuation()
        self.run_dir = Path(cfg.trainer.run_dir)
        seed_everything(cfg.trainer.seed)  # same initial weights on every rank
        placement = Placement(rt.device, rt.channels_last, rt.world.rank, rt.world.world_size, cfg.optim.accumulation)
        self.data = build_data(cfg.data, placement, cfg.trainer.seed, cfg.model.num_classes)
        model = build_model(cfg.model, cfg.model.num_classes or self.data.num_classes)
        if cfg.model.pretrained:  # the same initial weights on every rank: every rank reads the file
            load_pretrained(model, cfg.model.pretrained, cfg.model.name)
        self.num_params = count_parameters(model)
        self.accumulation = cfg.optim.accumulation
        self.steps_per_epoch = max(1, self.data.train.steps_per_epoch() // self.accumulation)
        global_batch = cfg.data.batch_size * rt.world.world_size * self.accumulation
        # The recipe's peak LR, warmup and schedule at the global batch the schedule counts in: this
        # start's, unless a rescale changed it (then the peak is scaled by its factor).
        schedule_batch = self.continuation.schedule_batch or global_batch
        recipe_lr = scaled_lr(cfg.optim, schedule_batch)
        self.base_lr = recipe_lr * self.continuation.lr_factor
        self.engine = build_engine(model, lambda module: build_optimizer(module, cfg.optim, recipe_lr, rt.device),
                                   cfg, rt)
        self.warmup_epochs, self.warmup_reason = warmup_epochs_for(cfg.optim, schedule_batch)
        schedule_steps = (self.steps_per_epoch if schedule_batch == global_batch
                          else epoch_steps(self.data.train.num_samples, schedule_batch, False))
        self.schedule = LRSchedule(self.engine.optimizer, cfg.optim, schedule_steps, cfg.trainer.epochs,
                                   self.warmup_epochs)
        self.schedule.factor = self.continuation.lr_factor
        self.mixup, self.loss_fn = make_loss(cfg, self.data.num_classes)
        self.ema = build_ema(self.engine.module, cfg.trainer, global_batch)
        self.state = TrainState(schedule_batch=schedule_batch)
        self.metrics = MetricsLog(self.run_dir, rt.is_main)
        self.position = RunPosition(self.state, self.data.train, global_batch, self.accumulation, self.steps_per_epoch,
                                    cfg.trainer.epochs)
        self.total_steps = self.position.total_steps(cfg.trainer.max_steps)
        self.stop = StopSignal()
        self.nonfinite_windows = 0  # consecutive log windows with a non-finite loss
        self.train_top1_windows: list[float] = []  # train top-1 of each log window since the last validation
        self.alerts: list[str] = []  # warnings raised while training (W&B alerts too)

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """Everything but the engine's own state (model, optimizer, scaler), which it saves itself."""
        return {"scheduler": self.schedule.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "rng": ckpt.rng_state(), "wandb_run_id": self.state.wandb_run_id,
                # the launch layout beside the progress: a resume at another world size keeps the global batch
                "progress": {**self.state.to_dict(), "world_size": self.rt.world.world_size,
                             "batch_size": self.cfg.data.batch_size, "accumulation": self.accumulation},
                "config": to_dict(self.cfg), "classes": list(self.data.classes)}

    def save(self) -> None:
        try:
            self.engine.save_checkpoint(self.run_dir, self.state.global_step, self.checkpoint_state())
            if self.rt.is_main:
                ckpt.prune(self.run_dir, self.cfg.trainer.keep_checkpoints, self.engine.layout)
        except OSError as exc:
            where = ckpt.checkpoint_dir(self.run_dir)
            if self.cfg.trainer.on_checkpoint_error == "stop":
                raise RuntimeError(f"checkpoint write failed at step {self.state.global_step} in {where}: {exc}; "
                                   "previous checkpoint kept") from None
            print(f"warning: checkpoint write failed at step {self.state.global_step} in {where}: {exc}; "
                  "previous checkpoint kept, training continues", file=sys.stderr, flush=True)
            dist_utils.barrier()

    def resume(self) -> None:
        mode = self.cfg.trainer.resume
        if mode == "never":
            return
        if mode == "auto":  # the newest of this engine's layout that loads
            found = ckpt.load_latest(self.run_dir, self.engine.load_checkpoint, self.engine.layout)
            if found is None:
                return
            path, state = found
        else:
            path, state = Path(mode), self.engine.load_checkpoint(Path(mode))
        self.schedule.load_state_dict(state["scheduler"])
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        self.state = TrainState.from_dict(state["progress"], state.get("wandb_run_id", ""))
        self._continue(state["progress"])
        self.metrics.truncate_after(self.state.global_step)
        self.log_line(f"resumed from {path} (epoch {self.state.epoch + 1}, step {self.state.global_step})")

    def _continue(self, progress: dict) -> None:
        """The resumed state in this start's terms: the schedule's units, and the epoch a rescale cut."""
        s, c, pos = self.state, self.continuation, self.position
        if "samples_seen" not in progress:  # a checkpoint from before the schedule counted samples
            s.samples_seen = s.global_step * pos.global_batch
        s.schedule_batch, s.lr_factor, s.epoch_stream = c.schedule_batch or pos.global_batch, c.lr_factor, list(c.epoch_stream)
        if c.rescaled_from:
            s.step_in_epoch = 0  # this start's steps count from the rescale's offset in the epoch's stream
        pos.state = s
        if pos.partial_epoch(s.epoch):
            self.data.train.continue_epoch(*s.epoch_stream)
        self.total_steps = pos.total_steps(self.cfg.trainer.max_steps)

    def log_line(self, text: str) -> None:
        if self.rt.is_main and text:
            print(text, flush=True)

    # -- the loop ----------------------------------------------------------------------------
    def train_one_epoch(self, progress: Progress) -> bool:
        """Returns False when the run must stop early (max_steps or a stop signal)."""
        s, world_size, pos = self.state, self.rt.world.world_size, self.position
        self.data.train.set_epoch(s.epoch, s.step_in_epoch * self.accumulation)
        self.log_line(size_note(self.cfg.data, s.epoch, resumed=s.step_in_epoch > 0))
        batches = iter(self.data.train)
        window = LogWindow(self.rt.device, world_size)
        steps = pos.steps_in(s.epoch)
        while s.step_in_epoch < steps:
            if s.global_step >= self.total_steps:
                return False
            self.schedule.set_step(pos.schedule_step())
            faults.before_step(s.global_step)
            for micro in range(self.accumulation):
                self.micro_step(self.next_batch(batches, window), micro == self.accumulation - 1, window)
            if self.ema is not None:
                self.ema.step(self.engine.module, s.global_step, pos.warmup_end_step(self.schedule.warmup_steps))
            s.step_in_epoch += 1
            s.global_step += 1
            s.samples_seen += pos.global_batch
            progress.advance(s.global_step)
            at_log = s.global_step % self.cfg.trainer.log_every == 0 or s.step_in_epoch == steps
            if at_log:
                self.log_window(window, progress, steps)
            every = self.cfg.trainer.checkpoint_every
            if every and s.global_step % every == 0 and s.step_in_epoch < steps:
                if self.nonfinite_windows == 0:  # never checkpoint a diverged state
                    self.save()
            if (world_size == 1 or at_log) and self.stop.agreed(world_size, self.rt.device):
                self.save()
                return False
        return True

    def next_batch(self, batches, window: LogWindow) -> tuple[torch.Tensor, torch.Tensor]:
        wait_start = time.perf_counter()
        batch = next(batches)
        faults.slow_batch()
        window.data_wait += time.perf_counter() - wait_start
        return batch

    def micro_step(self, batch: tuple[torch.Tensor, torch.Tensor], last_micro: bool, window: LogWindow) -> None:
        images, labels = batch
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        loss_fn = window.counting(self.loss_fn)
        if faults.nan_loss(self.state.global_step):  # injected divergence: NaN flows into the gradients
            counted = loss_fn
            loss_fn = lambda out, target: counted(out, target) * float("nan")  # noqa: E731
        loss = self.engine.micro_step(images, labels, loss_fn, last_micro, self.accumulation)
        window.add(loss, images.shape[0])

    def log_window(self, window: LogWindow, progress: Progress, steps: int) -> None:
        s, stats = self.state, window.close()
        s.train_seconds += stats.seconds
        self.check_finite(stats.mean_loss)
        s.img_per_sec.append(stats.img_per_sec)
        self.train_top1_windows.append(stats.top1)
        s.data_wait.append(stats.data_wait)
        lr = self.schedule.current_lr()
        self.metrics.log({"step": s.global_step, "epoch": self.position.epoch_fraction(),
                          "train/loss": stats.mean_loss, "train/top1": stats.top1, "train/lr": lr,
                          "train/img_per_sec": stats.img_per_sec, "train/data_wait": stats.data_wait,
                          "train/image_size": train_size(self.cfg.data, s.epoch)})
        progress.train_line(s.epoch, self.cfg.trainer.epochs, s.step_in_epoch, steps, s.global_step,
                            stats.mean_loss, lr, stats.img_per_sec, stats.data_wait)

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

    def validate(self, epoch: float) -> None:
        """Evaluate on the val split (and the EMA weights), log it, keep the best top-1."""
        s = self.state
        self.engine.sync_buffers()
        s.last_val = evaluate(self.engine.module, self.data.val, self.rt, flip=self.cfg.trainer.tta_flip)
        if self.ema is not None:
            s.last_val.update(evaluate(self.ema.module, self.data.val, self.rt, "val_ema", self.cfg.trainer.tta_flip))
        set_train_mode(self.engine.wrapped, self.cfg.model.frozen_bn)
        s.best_top1 = max(s.best_top1, s.last_val["val/top1"])
        self.metrics.log({"step": s.global_step, "epoch": epoch, **s.last_val})
        windows, self.train_top1_windows = self.train_top1_windows, []
        if not self.alerts and windows and s.global_step >= self.position.warmup_end_step(self.schedule.warmup_steps):
            text = val_at_chance(s.last_val["val/top1"], statistics.mean(windows), self.data.num_classes,
                                 s.last_val["val/samples"])
            if text:  # once per run; training goes on
                self.alerts.append(text)
                self.metrics.alert("val top-1 at chance", text)

    def fit(self) -> dict:
        cfg, s = self.cfg, self.state
        progress = Progress(cfg.logging.progress, self.rt.is_main, self.total_steps, s.global_step)
        progress.advance(s.global_step)
        set_train_mode(self.engine.wrapped, cfg.model.frozen_bn)
        with naming_the_step_of_a_dead_loader_worker(s, self.data.train):  # a worker's death may come at any point
            try:
                interrupted = self._epochs(progress)
            finally:
                progress.close()
            return self.summary("interrupted" if interrupted else "completed")

    def _epochs(self, progress: Progress) -> bool:
        """Train, validate and checkpoint epoch after epoch; True when a stop signal ended the run."""
        cfg, s = self.cfg, self.state
        interrupted = False
        while s.epoch < cfg.trainer.epochs and s.global_step < self.total_steps:
            if not self.train_one_epoch(progress):
                interrupted = bool(self.stop.requested)
                break
            if s.epoch + 1 == cfg.trainer.epochs or (s.epoch + 1) % cfg.trainer.eval_every == 0:
                self.validate(s.epoch + 1)
                v = s.last_val
                progress.message(f"epoch {s.epoch + 1}/{cfg.trainer.epochs} val top1 {v['val/top1']:.2f} "
                                 f"top5 {v['val/top5']:.2f} loss {v['val/loss']:.4f} ({v['val/samples']} images)")
            s.epoch += 1
            s.step_in_epoch = 0
            if self.nonfinite_windows == 0:  # never checkpoint a diverged state
                self.save()
        if not interrupted and s.global_step >= self.total_steps and not s.last_val:
            self.validate(self.position.epoch_fraction())  # max_steps came first
            self.save()
        return interrupted

    def summary(self, status: str) -> dict:
        s = self.state
        rates = s.img_per_sec[1:] or s.img_per_sec  # the first window includes warm-up
        waits = s.data_wait[1:] or s.data_wait
        skipped = self.engine.skipped_steps
        return {"status": status, "model": self.cfg.model.name, "parameters": self.num_params,
                "best/val/top1": s.best_top1 if s.best_top1 >= 0 else None,
                "final/val/top1": s.last_val.get("val/top1"), "final/val/top5": s.last_val.get("val/top5"),
                "val/samples": s.last_val.get("val/samples"),
                "train/img_per_sec": statistics.median(rates) if rates else None,
                "train/data_wait": round(statistics.median(waits), 4) if waits else None,
                "epochs": self.position.epoch_fraction(), "steps": s.global_step,
                "train_seconds": round(s.train_seconds, 2), "replaced_images": self.data.train.replaced_images,
                "fp16_skipped_steps": int(skipped) if self.rt.precision == "fp16" and skipped is not None else None,
                "replicas_identical": replica_checksum(self.engine.module, self.rt.device), "alerts": self.alerts,
                "peak_memory_gib": (round(torch.cuda.max_memory_allocated(self.rt.device) / 2**30, 2)
                                    if self.rt.device.type == "cuda" else None)}
