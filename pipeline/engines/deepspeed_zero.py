"""DeepSpeed engine (ZeRO 0/1/2) with the same methods as `TorchEngine`.

The DeepSpeed config is generated from ours (batch sizes, accumulation, ZeRO stage, fp16 loss
scaling, clipping) unless `distributed.deepspeed_config` names a user JSON. bf16 runs as torch
autocast over fp32 weights: DeepSpeed's "bf16" section casts parameters but not BatchNorm buffers,
which breaks ResNets ("expected scalar type BFloat16 but found Float"; ../shared cpu-findings).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline import faults
from pipeline.config import RootConfig
from pipeline.engines import zero_reshard
from pipeline.runtime import Runtime


def deepspeed_config(cfg: RootConfig, rt: Runtime) -> dict:
    if cfg.distributed.deepspeed_config:
        path = Path(cfg.distributed.deepspeed_config)
        if not path.is_file():
            raise FileNotFoundError(f"DeepSpeed config not found: {path}")
        user = json.loads(path.read_text())
        # Batch geometry always follows our data config, so both stay consistent.
        user.update(_batch_keys(cfg, rt))
        return user
    ds = {
        **_batch_keys(cfg, rt),
        "zero_optimization": {"stage": cfg.distributed.zero_stage},
        # ZeRO 1/2 wrap optimizers they have not been tested with (here: torch SGD) only when told so.
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": cfg.optim.grad_clip,
        "steps_per_print": 10**9,  # our own logging reports progress
        "wall_clock_breakdown": False,
    }
    if rt.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}  # 0 = dynamic scaling
    return ds


def _batch_keys(cfg: RootConfig, rt: Runtime) -> dict:
    acc = cfg.optim.accumulation
    return {"train_micro_batch_size_per_gpu": cfg.data.batch_size, "gradient_accumulation_steps": acc,
            "train_batch_size": cfg.data.batch_size * acc * rt.world.world_size}


def _skip_shared_memory_allreduce_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles its shared-memory all-reduce with ninja when its comm
    backend starts: about a minute of C++ on 2 cores, once per machine (then cached under
    ~/.cache/torch_extensions). The op serves only `inference_all_reduce` (tensor-parallel
    inference); ZeRO training reduces through torch.distributed (gloo here). Marking it
    incompatible, in the dict DeepSpeed keeps for that purpose, makes DeepSpeed fall back to the
    process group, as it does on a CPU without the op's ISA."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedEngine:
    layout = ckpt.DEEPSPEED

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, cfg: RootConfig, rt: Runtime) -> None:
        if rt.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # no oneCCL here: DeepSpeed uses gloo
        # DeepSpeed reads the torchrun variables itself; a job started without a launcher (one GPU,
        # `pipeline train trainer.engine=deepspeed`) has none of them, so give it this rank's world.
        for name, value in (("LOCAL_RANK", rt.world.local_rank), ("RANK", rt.world.rank),
                            ("WORLD_SIZE", rt.world.world_size)):
            os.environ.setdefault(name, str(value))
        import deepspeed

        if rt.device.type == "cpu":
            _skip_shared_memory_allreduce_build()
        self.rt, self.module = rt, module
        self.optimizer = optimizer  # the base optimizer: LRSchedule sets its param_groups' lr
        self.ds_config = deepspeed_config(cfg, rt)
        self.wrapped, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=self.ds_config,
                                                     dist_init_required=False)
        self.skipped_steps = None  # DeepSpeed's fp16 loss scaler keeps its own count

    def autocast(self):
        enabled = self.rt.precision == "bf16"  # fp16 is DeepSpeed's own (half weights + loss scaler)
        return torch.autocast(self.rt.device.type, dtype=torch.bfloat16, enabled=enabled)

    def micro_step(self, images, targets, loss_fn, last_micro: bool, accumulation: int) -> torch.Tensor:
        if self.rt.precision == "fp16":
            images = images.half()
        with self.autocast():
            loss = loss_fn(self.wrapped(images), targets)
        self.wrapped.backward(loss)  # divides by gradient_accumulation_steps itself
        self.wrapped.step()  # steps the optimizer only at the accumulation boundary
        return loss.detach().float()

    def sync_buffers(self) -> None:
        """Broadcast rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP does this before every forward; DeepSpeed does not, so each rank's BN statistics drift
        on its own shard. Syncing before validation and checkpoints makes the validated model the
        checkpointed one on every rank, and a resumed run identical to an uninterrupted one.
        """
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            for buf in self.module.buffers():
                torch.distributed.broadcast(buf.data, src=0)

    # Checkpoints: every rank writes its ZeRO shard, in DeepSpeed's own layout, under a temporary
    # tag; once every rank is done, rank 0 renames it to ds-step-<N>. A job killed mid-save leaves
    # only the temporary folder, which no listing takes for a checkpoint and the next save removes.
    def save_checkpoint(self, run_dir: Path, global_step: int, extra: dict) -> None:
        self.sync_buffers()
        folder = ckpt.checkpoint_dir(run_dir)
        tag = ckpt.deepspeed_tag(global_step)
        if self.rt.is_main:
            ckpt.remove_partial_deepspeed_saves(run_dir)
        dist_utils.barrier()
        self.wrapped.save_checkpoint(str(folder), tag=ckpt.partial_tag(tag), client_state=extra, save_latest=False)
        dist_utils.barrier()  # every shard written
        if self.rt.is_main:
            faults.checkpoint_written()
            ckpt.complete_deepspeed_save(run_dir, tag)
        dist_utils.barrier()

    def load_checkpoint(self, path: Path) -> dict:
        """DeepSpeed's loader unpickles with weights_only=False: every file of the tag is first
        loaded weights-only here (`checkpoint.verify_deepspeed_files`), so a pickle that would run
        code is refused before DeepSpeed opens it."""
        path = Path(path)
        saved = zero_reshard.saved_world(path) if path.is_dir() else 0
        if saved and saved != self.rt.world.world_size:  # ZeRO-1/2 shards of another world size
            try:
                return zero_reshard.load_resharded(self.wrapped, path)
            except ckpt.CheckpointError:
                raise
            except Exception as exc:  # noqa: BLE001 - DeepSpeed raises many kinds; the caller falls back
                raise ckpt.CheckpointError(f"could not re-shard {path} from world {saved} to world "
                                           f"{self.rt.world.world_size}: {str(exc).strip()[:200]}") from None
        ckpt.verify_deepspeed_files(path)
        try:
            load_path, client_state = self.wrapped.load_checkpoint(str(path.parent), tag=path.name)
        except Exception as exc:  # noqa: BLE001 - DeepSpeed raises many kinds; the caller falls back
            raise ckpt.CheckpointError(f"DeepSpeed could not load checkpoint {path}: {str(exc).strip()[:200]}") from None
        if load_path is None:
            raise ckpt.CheckpointError(f"DeepSpeed could not load checkpoint {path}")
        return client_state
