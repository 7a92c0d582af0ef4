"""A run that goes on at another world size: the global batch kept through the accumulation, the data
position exact (each sample of the interrupted epoch used once), the losses of a run that never stopped."""
import json

import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.data.sampler import ShardPlan
from pipeline.metrics import read_metrics
from pipeline.training import elastic
from tests.helpers import FAST, run_cli
from tests.test_distributed import torchrun


def _used(num: int, world: int, batch: int, acc: int, epoch: int, start_step: int, end_step: int) -> list[int]:
    """Samples the ranks use for optimizer steps [start_step, end_step) of `epoch`."""
    used = []
    for rank in range(world):
        plan = ShardPlan(num, rank, world, batch, True, seed=7, accumulation=acc)
        for micro in plan.batches(epoch, start_step * acc)[: (end_step - start_step) * acc]:
            used += [index for index, _ in micro]
    return sorted(used)


@pytest.mark.parametrize("before,after", [((2, 3), (1, 6)), ((1, 6), (2, 3)), ((2, 3), (3, 2)), ((3, 2), (1, 6))])
def test_each_sample_of_the_interrupted_epoch_is_used_once_at_the_new_size(before, after):
    """Global batch 6 x batch 8 = 48 at every size; 480 samples = 10 whole steps; stop after 4."""
    (w0, a0), (w1, a1) = before, after
    assert w0 * a0 == w1 * a1
    plans = [ShardPlan(480, 0, w, 8, True, accumulation=a) for w, a in (before, after)]
    assert plans[0].steps_per_epoch() // a0 == plans[1].steps_per_epoch() // a1 == 10
    done = _used(480, w0, 8, a0, epoch=3, start_step=0, end_step=4)
    rest = _used(480, w1, 8, a1, epoch=3, start_step=4, end_step=10)
    assert sorted(done + rest) == list(range(480))  # every sample exactly once
    assert done + rest != list(range(480)) and len(set(done)) == 192
    # with padding (500 samples: the last step wraps 76 samples), the same multiset as a run that never stopped
    straight = _used(500, w0, 8, a0, epoch=1, start_step=0, end_step=11)
    resumed = sorted(_used(500, w0, 8, a0, 1, 0, 4) + _used(500, w1, 8, a1, 1, 4, 11))
    assert resumed == straight


def test_adapt_keeps_the_global_batch_or_refuses_with_one_line():
    cfg = load_config(None, ["data.batch_size=16"])
    recorded = {"world_size": 2, "batch_size": 16, "accumulation": 3, "global_step": 40, "epoch": 1,
                "step_in_epoch": 5, "checkpoint": "runs/x/checkpoints/step-000000040.pt"}
    adapted, line = elastic.adapt(cfg, 3, recorded)
    assert adapted.optim.accumulation == 2
    assert line == ("resumed at world 3 from world 2 (step 40, epoch 2 at sample 480): global batch 96 kept, "
                    "accumulation 3 -> 2")
    assert elastic.adapt(cfg, 2, recorded) == (cfg, "")
    with pytest.raises(ConfigError, match=r"cannot keep the global batch 96 .* at world 4 with data.batch_size=16: "
                                          r"96 / \(16 x 4\) is not a whole accumulation; resume at world 1, 2, 3, 6"):
        elastic.adapt(cfg, 4, recorded)


def _final_model(run):
    from pipeline import checkpoint as ckpt

    return ckpt.load_latest(run)[1]["model"]


def _common(demo_data, batch: int) -> list[str]:
    return [*FAST, f"data.path={demo_data}", "trainer.precision=fp32", "model.frozen_bn=true", "trainer.epochs=2",
            "trainer.max_steps=12", f"data.batch_size={batch}", "trainer.log_every=1", "trainer.checkpoint_every=5",
            "optim.weight_decay=0.0001", "trainer.keep_checkpoints=10",
            # Repeated augmentation (issue 33) in the 2 <-> 1 cases: its stream of copies depends on the
            # global batch only, so those resumes carry it on. Not in the 2 -> 3 cases: their stream is
            # as identical (tests/test_recipe_pieces.py), but with it the first loss after the resume
            # differed by 2-3e-5 relative (rounding between the two sizes, amplified over 5 steps),
            # above the 2e-5 this test holds the run without it to.
            *(["data.repeat_aug=2"] if batch == 16 else [])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, demo_data):
    """The run that never stopped, one per (world, batch), under DDP, shared by every engine's case:
    in fp32 DDP, ZeRO-0 and ZeRO-2 log the same losses to the last digit at the same world
    (measured: 12 steps at world 2, docs/benchmarks.md), so a resumed ZeRO run is held to DDP's
    trajectory, a stricter check than its own engine's, at 3 runs instead of 8."""
    runs: dict[tuple[int, int], object] = {}

    def get(world: int, batch: int, accumulation: int):
        if (world, batch) not in runs:
            run = tmp_path_factory.mktemp(f"straight-{world}x{batch}")
            proc = torchrun(world, "train", *_common(demo_data, batch), "trainer.engine=ddp",
                            f"optim.accumulation={accumulation}", f"trainer.run_dir={run}")
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[world, batch] = run
        return runs[world, batch]

    return get


@pytest.mark.slow
# Each engine shrinks and grows once: ZeRO-1 and ZeRO-2 re-split the same optimizer state (ZeRO-2's
# partitioned gradients live within a step), so ZeRO-1 grows 1 -> 2 and ZeRO-2 shrinks 2 -> 1 and
# re-splits 2 -> 3, the hardest case; ZeRO-2 1 -> 2 was dropped as ZeRO-1's twin (suite time, issue 33).
@pytest.mark.parametrize("engine,first,second,batch", [("ddp", 2, 1, 16), ("ddp", 1, 2, 16), ("zero2", 2, 1, 16),
                                                        ("zero2", 2, 3, 8), ("zero1", 1, 2, 16),
                                                        ("zero0", 2, 1, 16), ("ddp", 2, 3, 8)])
def test_run_resumed_at_another_world_size_follows_the_uninterrupted_run(tmp_path, demo_data, uninterrupted, engine,
                                                                         first, second, batch):
    """Global batch 48 (16 x 3) or 24 (8 x 3 ranks): world 2 x 16 x 1 and world 1 x 16 x 2, or
    world 2 x 8 x 3 and world 3 x 8 x 2. A crash at step 7 (checkpoint at 5), resumed at the other
    size, against a run that never stopped at that size: the same logged losses after the resume
    (rank 0's, so the same size is compared), the same final weights and top-1. fp32 and frozen BN,
    so the two sizes compute the same gradient up to rounding; under ZeRO-2 the optimizer state
    (SGD momentum, fp32 master weights) is re-split from the old ranks' shards."""
    global_batch = {16: 32, 8: 48}[batch]
    acc = {w: global_batch // (batch * w) for w in (first, second)}
    engine_args = (["trainer.engine=ddp"] if engine == "ddp" else
                   ["trainer.engine=deepspeed", f"distributed.zero_stage={engine[-1]}"])
    common = [*_common(demo_data, batch), *engine_args]
    straight, moved = uninterrupted(second, batch, acc[second]), tmp_path / "moved"
    crash = torchrun(first, "train", *common, f"optim.accumulation={acc[first]}", f"trainer.run_dir={moved}",
                     env={"PIPELINE_FAULT_RAISE_AT_STEP": "7"})
    from pipeline import checkpoint as ckpt

    assert crash.returncode != 0 and [ckpt._step_of(p) for p in ckpt.list_checkpoints(moved)] == [5]
    # the same command at the new size: the config still says the old accumulation
    proc = torchrun(second, "train", *common, f"optim.accumulation={acc[first]}", f"trainer.run_dir={moved}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"resumed at world {second} from world {first} (step 5, epoch 1 at sample {5 * global_batch}): global "
            f"batch {global_batch} kept, accumulation {acc[first]} -> {acc[second]}") in proc.stdout
    losses = {run: {r["step"]: r["train/loss"] for r in read_metrics(run) if "train/loss" in r} for run in (straight, moved)}
    steps = 12  # trainer.max_steps: 13 steps per epoch at global batch 32, 9 at 48 (an epoch boundary crossed)
    assert sorted(losses[moved]) == sorted(losses[straight]) == list(range(1, steps + 1))
    # Tolerance: the steps right after the resume agree to ~1e-6 (a lost momentum would move step 7's
    # loss, a sample used twice or skipped would move step 6's, by far more); the two sizes round
    # differently (all-reduced mean vs summed micro-batches), and SGD at lr 0.1 amplifies that to
    # ~2e-4 relative in the loss and ~6e-4 in a weight over 20 steps (measured at 26 steps; the test runs 12).
    for k in range(6, steps + 1):  # before the resume rank 0 logged its share at the old size
        limit = 2e-5 if k <= 8 else 1e-3
        assert abs(losses[moved][k] - losses[straight][k]) <= limit * abs(losses[straight][k]), \
            (k, losses[straight][k], losses[moved][k])
    summaries = [json.loads((run / "summary.json").read_text()) for run in (straight, moved)]
    assert summaries[0]["steps"] == summaries[1]["steps"] == steps and summaries[1]["global_batch"] == global_batch
    # weights equal to ~1e-4: the same val images right, give or take one near-tie
    assert abs(summaries[0]["final/val/top1"] - summaries[1]["final/val/top1"]) * 130 / 100 <= 1.01
    a, b = _final_model(straight), _final_model(moved)
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=3e-3, rtol=0, msg=key)
    if engine == "zero2" and second == 3:
        # A ZeRO checkpoint re-split to 3 ranks, read by one process: `pipeline eval` and `pipeline
        # export` (world-2 ZeRO checkpoints are evaluated and exported in tests/test_distributed.py;
        # DDP's checkpoint is one file whatever the world)
        evaluated = run_cli("eval", *common, f"trainer.run_dir={moved}", check=True)
        assert json.loads(evaluated.stdout.strip().splitlines()[-1])["val/samples"] == 130
        exported = run_cli("export", str(moved), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors"),
                           check=True)
        assert (tmp_path / "m.safetensors").is_file() and "max |exported - eager|" in exported.stdout


def test_plan_says_what_a_resume_at_a_new_size_will_do(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "checkpoints").mkdir()
    torch.save({"format": 1, "progress": {"world_size": 16, "batch_size": 32, "accumulation": 1, "global_step": 400,
                                          "epoch": 1, "step_in_epoch": 90}},
               tmp_path / "checkpoints" / "step-000000400.pt")
    args = ["plan", "--config", "configs/imagenet/resnet50.yaml", "--resume", str(tmp_path), "data.batch_size=32"]
    assert main([*args, "--nodes", "1", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("resumes at world 8 from world 16 (step 400, epoch 2 at sample 46,080): global "
                                   "batch 512 kept, accumulation 1 -> 2")
    assert json.loads(out.strip().splitlines()[-1])["global_batch"] == 512
    assert "steps left" in out and "samples left in epoch 2" in out
    assert main([*args, "--nodes", "3", "--gpus-per-node", "2"]) == 2
    assert "config error: cannot keep the global batch 512" in capsys.readouterr().err
