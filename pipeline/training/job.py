"""`pipeline train`: the job around the Trainer (process group, run directory, tracking, summary)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline.config import ConfigError, RootConfig, to_yaml
from pipeline.metrics import format_duration
from pipeline.runlock import RunLock
from pipeline.runtime import Runtime, agree_on_numerics, configure_threads, environment_facts, make_runtime
from pipeline.training import elastic
from pipeline.training.model_card import write_model_card
from pipeline.training.plan import make_plan
from pipeline.training.trainer import Trainer
from pipeline.world import WorldInfo, world_info_from_env

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving a checkpoint; resume to go on


def run_training(cfg: RootConfig) -> tuple[dict, int]:
    """Returns (summary, exit code)."""
    world = world_info_from_env()
    run_dir = Path(cfg.trainer.run_dir)
    # Rank 0, before any process group: a bad run_dir, or one another live job holds, ends the job
    # at once with one line (torchrun and srun then stop the other ranks), before anything is written.
    lock = _prepare_run_dir(run_dir, cfg) if world.rank == 0 else None
    try:
        return _train(cfg, world, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RootConfig, world: WorldInfo, run_dir: Path) -> tuple[dict, int]:
    configure_threads(cfg.trainer, world)
    rt = make_runtime(cfg.trainer, world)
    # DDP and DeepSpeed need a process group even for one process.
    dist_utils.init_process_group(world, rt.device, cfg.distributed.backend, cfg.distributed.timeout_s,
                                  always=rt.engine_kind != "single")
    rt = agree_on_numerics(rt)
    start = time.time()
    try:
        # The planned global batch at this world size (trainer.plan_world_size); a checkpoint from
        # another world size: the same global batch through another accumulation, or a rescale.
        recorded = _recorded(cfg, run_dir, rt.engine_kind)
        cfg, resized, continuation = elastic.resolve(cfg, world.world_size, recorded)
        trainer = Trainer(cfg, rt, continuation)
        trainer.resume()
        rescale_row = _rescale_record(trainer, continuation) if continuation.rescaled_from else {}
        trainer.log_line(resized + rescale_row.pop("detail", ""))
        env = environment_facts(rt, trainer.data.backend)
        # The recipe at this launch size, as `pipeline plan` prints it (also in the W&B config).
        env["plan"] = make_plan(cfg, world.world_size, trainer.data.train.num_samples, "the run's data")
        tracker = _start_tracking(cfg, run_dir, trainer, env) if rt.is_main else None
        if rescale_row:  # after the tracker joined the sinks: the W&B run gets the row too
            trainer.metrics.log(rescale_row)
        if rt.is_main:
            (run_dir / "environment.json").write_text(json.dumps(env, indent=2))
            trainer.log_line(_start_line(cfg, rt, trainer, env["device"], tracker))
        try:
            summary = trainer.fit()
        except BaseException:
            if tracker is not None:
                tracker.run.finish(exit_code=1)
            raise
        summary.update({"wall_seconds": round(time.time() - start, 2), "device": env["device"],
                        "world_size": world.world_size, "data_backend": trainer.data.backend,
                        "precision": rt.precision, "channels_last": rt.channels_last,
                        "numerics_reason": rt.numerics_reason, "engine": rt.engine_kind,
                        "device_hours": round(summary["train_seconds"] * world.world_size / 3600, 4),
                        "global_batch": env["plan"]["global_batch"], "peak_lr": env["plan"]["lr"],
                        "warmup_epochs": env["plan"]["warmup_epochs"],
                        "wandb_run_id": trainer.state.wandb_run_id or None, "rescales": trainer.state.rescales})
        interrupted = summary["status"] == "interrupted"
        if rt.is_main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            write_model_card(run_dir, cfg, summary, env["plan"], {
                "path": cfg.data.path, "classes": list(trainer.data.classes),
                "train_images": trainer.data.train.num_samples, "val_images": trainer.data.val.num_samples})
            if tracker is not None:
                newest = ckpt.list_checkpoints(run_dir, trainer.engine.layout)
                tracker.finish(summary, newest[0] if newest else None, interrupted)
            verb = "stopped (checkpoint saved; rerun the same command to resume)" if interrupted else "finished"
            top1 = summary["final/val/top1"]
            trainer.log_line(f"{verb} in {format_duration(summary['wall_seconds'])}: "
                             + (f"val top1 {top1:.2f}%, " if top1 is not None else "")
                             + f"run directory {run_dir.resolve()}")
        return summary, (EXIT_INTERRUPTED if interrupted else 0)
    finally:
        dist_utils.shutdown()


def _prepare_run_dir(run_dir: Path, cfg: RootConfig) -> RunLock:
    """The run directory, created and locked for this job (pipeline/runlock.py), with its config."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        took_over = lock.acquire()
    except OSError as exc:
        raise ConfigError(f"trainer.run_dir {run_dir} cannot be created ({exc.strerror or exc}); "
                          "set trainer.run_dir to a writable folder") from None
    if took_over:
        print(took_over, flush=True)
    try:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    except OSError as exc:
        lock.release()
        raise ConfigError(f"trainer.run_dir {run_dir} cannot be written ({exc.strerror or exc}); "
                          "set trainer.run_dir to a writable folder") from None
    return lock


def _recorded(cfg: RootConfig, run_dir: Path, engine_kind: str) -> dict | None:
    """The launch layout of the checkpoint this start resumes from (None: a fresh start)."""
    if cfg.trainer.resume == "auto":
        return elastic.recorded_layout(run_dir, engine_kind)
    if cfg.trainer.resume == "never" or not Path(cfg.trainer.resume).exists():
        return None  # a missing path: resume() names it
    try:
        return elastic.layout_of(Path(cfg.trainer.resume))
    except Exception:  # noqa: BLE001 - unreadable: resume() refuses it with its own line
        return None


def _rescale_record(trainer: Trainer, continuation: elastic.Continuation) -> dict:
    """A rescale: the metrics row that records it (W&B too), with the rest of its line ("detail");
    its one-line history entry goes into the checkpoint's progress (the summary, the model card)."""
    s, pos = trainer.state, trainer.position
    left_in_epoch = pos.steps_in(s.epoch)
    detail = (f"; {left_in_epoch} steps of {pos.global_batch} left in epoch {s.epoch + 1} (its unused samples, each "
              f"once), then {pos.steps_per_epoch} per epoch: {trainer.total_steps - s.global_step} steps to go, "
              f"{trainer.total_steps} in all")
    s.rescales.append(f"step {s.global_step}: global batch {continuation.rescaled_from} -> {pos.global_batch}, "
                      f"peak LR x{continuation.lr_factor:.4g} of the recipe's ({continuation.lr_rule})")
    return {"step": s.global_step, "elastic/global_batch": pos.global_batch,
            "elastic/previous_global_batch": continuation.rescaled_from, "elastic/lr_factor": continuation.lr_factor,
            "elastic/total_steps": trainer.total_steps, "detail": detail}


def _start_tracking(cfg: RootConfig, run_dir: Path, trainer: Trainer, env: dict):
    """A W&B run as a metrics sink (rank 0), resumed when the checkpoint names one."""
    if cfg.logging.wandb.mode == "disabled":
        return None
    from pipeline.tracking.wandb_run import WandbTracker, run_id_for

    trainer.state.wandb_run_id = run_id_for(run_dir, trainer.state.wandb_run_id)
    tracker = WandbTracker(cfg, run_dir, trainer.state.wandb_run_id, env)
    trainer.metrics.sinks.append(tracker)
    return tracker


def _start_line(cfg: RootConfig, rt: Runtime, trainer: Trainer, device: str, tracker) -> str:
    data = trainer.data
    return (f"model {cfg.model.name} ({trainer.num_params:,} parameters) on {device}, "
            f"{rt.precision}{' channels_last' if rt.channels_last else ''} ({rt.numerics_reason}), "
            f"engine {rt.engine_kind}, world {rt.world.world_size}, global batch "
            f"{cfg.data.batch_size * rt.world.world_size * cfg.optim.accumulation}, peak lr {trainer.base_lr:.4g}"
            f"{f' after {trainer.warmup_epochs:g} warmup epochs' if trainer.warmup_epochs else ''}, data {data.backend} "
            f"({data.train.num_samples} train / {data.val.num_samples} val images)"
            + (f", W&B {tracker.mode} run {trainer.state.wandb_run_id}" if tracker else ""))
