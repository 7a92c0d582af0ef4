"""A run that goes on at another world size: the global batch kept through the accumulation, the data
position exact (each sample of the interrupted epoch used once), the losses of a run that never stopped."""
import json
from collections import Counter

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
    same, line = elastic.adapt(cfg, 2, recorded)  # the checkpoint's own layout: its accumulation, no line
    assert same.optim.accumulation == 3 and line == ""
    with pytest.raises(ConfigError, match=r"cannot keep the global batch 96 .* at world 4 with data.batch_size=16: "
                                          r"96 / \(16 x 4\) is not a whole accumulation; resume at world 1, 2, 3, 6"
                                          r".*; or set trainer.elastic=rescale .* trainer.plan_world_size="):
        elastic.adapt(cfg, 4, recorded)


def test_a_plan_size_keeps_one_global_batch_at_every_size_that_divides_it():
    cfg = load_config(None, ["data.batch_size=16", "optim.accumulation=2", "trainer.plan_world_size=8"])
    for world, accumulation in [(1, 16), (2, 8), (4, 4), (8, 2), (16, 1)]:
        planned, line = elastic.planned(cfg, world)
        assert planned.optim.accumulation == accumulation
        assert line == f"world {world} of a plan for 8: accumulation {accumulation}, global batch 256"
    with pytest.raises(ConfigError, match=r"world 3 cannot run the plan for trainer.plan_world_size=8: global batch 256 "
                                          r"/ \(16 x 3\) is not a whole accumulation; start at world 1, 2, 4, 8, 16, set "
                                          r"trainer.plan_world_size to a multiple of 3, or set trainer.elastic=rescale"):
        elastic.planned(cfg, 3)
    rescaling = load_config(None, ["data.batch_size=16", "trainer.plan_world_size=8", "trainer.elastic=rescale"])
    assert elastic.planned(rescaling, 3) == (rescaling, "world 3 is outside the plan for 8 (global batch 128): "
                                                        "trainer.elastic=rescale plans global batch 48 for this start")
    assert elastic.planned(load_config(None, []), 3)[1] == ""  # no plan size: the first start's world, as before


def test_rescale_replans_the_batch_and_keeps_the_schedule_in_samples():
    """World 1 x 16 (global batch 16) stopped at step 3 of epoch 2 (48 samples in), resumed at world 2
    x 16 with trainer.elastic=rescale: global batch 32, LR x2 by the linear rule, and the epoch goes on
    from sample 48 of its stream; a second rescale in the same epoch (-> world 3) adds its own offset."""
    cfg = load_config(None, ["data.batch_size=16", "trainer.elastic=rescale"])
    recorded = {"world_size": 1, "batch_size": 16, "accumulation": 1, "global_step": 10, "epoch": 1,
                "step_in_epoch": 3, "checkpoint": "c"}
    _, line, cont = elastic.resolve(cfg, 2, recorded)
    assert cont == elastic.Continuation(16, 2.0, (1, 16, 48), 16, "linear rule (Goyal et al. 2017)")
    assert line == ("rescaled at world 2 from world 1 (step 10, epoch 2 at sample 48): global batch 16 -> 32, peak LR "
                    "x2 of the recipe's by the linear rule (Goyal et al. 2017), the LR schedule kept in samples seen")
    again = {"world_size": 2, "batch_size": 16, "accumulation": 1, "global_step": 11, "epoch": 1, "step_in_epoch": 1,
             "schedule_batch": 16, "lr_factor": 2.0, "epoch_stream": [1, 16, 48], "checkpoint": "c"}
    assert elastic.resolve(cfg, 3, again)[2] == elastic.Continuation(16, 3.0, (1, 16, 80), 32,
                                                                     "linear rule (Goyal et al. 2017)")
    assert elastic.resolve(cfg, 1, again)[2] == elastic.Continuation(16, 2.0, (1, 16, 48))  # 32 kept: no rescale
    lamb = load_config(None, ["data.batch_size=16", "trainer.elastic=rescale", "optim.name=lamb", "optim.base_batch=0"])
    assert elastic.resolve(lamb, 4, recorded)[2].lr_factor == 2.0  # sqrt(64 / 16)
    with pytest.raises(ConfigError, match="cannot keep the global batch 16"):  # without the setting: refused
        elastic.resolve(load_config(None, ["data.batch_size=16"]), 2, recorded)


def test_an_explicit_resume_path_carries_its_layout_and_rescale_record(tmp_path):
    """trainer.resume=<path> reads the checkpoint's layout as auto reads the newest one: a rescaled
    run resumed from a chosen checkpoint keeps its LR factor, schedule units and epoch stream."""
    from pipeline.training.job import _recorded

    progress = {"world_size": 2, "batch_size": 16, "accumulation": 1, "global_step": 11, "epoch": 1,
                "step_in_epoch": 1, "schedule_batch": 16, "lr_factor": 2.0, "epoch_stream": [1, 16, 48]}
    path = tmp_path / "step-000000011.pt"
    torch.save({"format": 1, "progress": progress}, path)
    cfg = load_config(None, ["data.batch_size=16", f"trainer.resume={path}"])
    recorded = _recorded(cfg, tmp_path, "ddp")
    assert recorded == {**progress, "checkpoint": str(path)}
    assert elastic.resolve(cfg, 2, recorded)[2] == elastic.Continuation(16, 2.0, (1, 16, 48))
    assert _recorded(load_config(None, ["trainer.resume=never"]), tmp_path, "ddp") is None
    assert _recorded(load_config(None, [f"trainer.resume={tmp_path / 'missing.pt'}"]), tmp_path, "ddp") is None


@pytest.mark.parametrize("repeats", [1, 3])
def test_a_rescaled_epoch_uses_each_of_its_remaining_samples_once(repeats):
    """130 samples; 3 steps of 16 at world 1, then global batch 32 at world 2 from sample 48, then
    (a second rescale) global batch 48 at world 3 after one more step: every position of the epoch's
    stream up to its 130 samples is used once, in the stream's order, with the stream's seeds."""
    def used(world, batch, partial, start, end):
        out = {}
        for rank in range(world):
            plan = ShardPlan(130, rank, world, batch, True, seed=5, repeats=repeats, partial=partial)
            for step, micro in enumerate(plan.batches(2)[start:end]):
                out.setdefault(start + step, []).extend(micro)
        return out
    stream = [pair for step in sorted(used(1, 16, None, 0, 99).items()) for pair in step[1]][:130]
    first = used(1, 16, None, 0, 3)
    second = used(2, 16, (2, 16, 48), 0, 1)
    assert ShardPlan(130, 0, 3, 16, True, partial=(2, 16, 80)).steps_in(2) == 2  # 50 left: two steps of 48
    third = used(3, 16, (2, 16, 80), 0, 2)
    seen = Counter(p for part in (first, second, third) for step in part.values() for p in step)
    assert sum(seen.values()) == 48 + 32 + 96 and not Counter(stream) - seen  # every (sample, seed) of the stream
    padding = seen - Counter(stream)
    assert sum(padding.values()) == 46 and set(padding) <= set(stream[80:])  # the last step's: from what was left


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
# "ddp-plan": the global batch given by trainer.plan_world_size=2 (issue 35) instead of an accumulation.
@pytest.mark.parametrize("engine,first,second,batch", [("ddp-plan", 2, 1, 16), ("ddp-plan", 1, 2, 16),
                                                        ("zero2", 2, 1, 16), ("zero2", 2, 3, 8), ("zero1", 1, 2, 16),
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
    engine_args = (["trainer.engine=ddp"] if engine.startswith("ddp") else
                   ["trainer.engine=deepspeed", f"distributed.zero_stage={engine[-1]}"])
    # the same command at both sizes: the config says the first size's accumulation, or the plan size
    layout = "trainer.plan_world_size=2" if engine == "ddp-plan" else f"optim.accumulation={acc[first]}"
    common = [*_common(demo_data, batch), *engine_args, layout]
    straight, moved = uninterrupted(second, batch, acc[second]), tmp_path / "moved"
    crash = torchrun(first, "train", *common, f"trainer.run_dir={moved}", env={"PIPELINE_FAULT_RAISE_AT_STEP": "7"})
    from pipeline import checkpoint as ckpt

    assert crash.returncode != 0 and [ckpt._step_of(p) for p in ckpt.list_checkpoints(moved)] == [5]
    if engine == "ddp-plan":
        assert f"world {first} of a plan for 2: accumulation {acc[first]}, global batch 32" in crash.stdout
    proc = torchrun(second, "train", *common, f"trainer.run_dir={moved}")
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


@pytest.mark.slow
def test_rescale_goes_on_at_a_global_batch_the_old_one_cannot_keep(tmp_path, demo_data):
    """World 1 x 16 (global batch 16) crashes at step 7 (checkpoint at 5) and resumes at world 2 x 16
    with trainer.elastic=rescale: 16 cannot be kept there, so the global batch becomes 32 and the peak
    LR doubles (linear rule) while the schedule goes on at sample 80; the 320 samples left of epoch 1
    take 10 steps, then 13 per epoch (400 / 32, padded): 28 steps in all."""
    run = tmp_path / "rescaled"
    common = [*FAST, f"data.path={demo_data}", "trainer.precision=fp32", "model.frozen_bn=true", "trainer.epochs=2",
              "data.batch_size=16", "trainer.log_every=1", "trainer.checkpoint_every=5", "trainer.engine=ddp",
              "trainer.elastic=rescale", f"trainer.run_dir={run}"]
    crash = torchrun(1, "train", *common, env={"PIPELINE_FAULT_RAISE_AT_STEP": "7"})
    assert crash.returncode != 0
    proc = torchrun(2, "train", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("rescaled at world 2 from world 1 (step 5, epoch 1 at sample 80): global batch 16 -> 32, peak LR x2 of the "
            "recipe's by the linear rule (Goyal et al. 2017), the LR schedule kept in samples seen; 10 steps of 32 left "
            "in epoch 1 (its unused samples, each once), then 13 per epoch: 23 steps to go, 28 in all") in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 28 and summary["global_batch"] == 32 and summary["val/samples"] == 130
    assert summary["rescales"] == ["step 5: global batch 16 -> 32, peak LR x2 of the recipe's (linear rule (Goyal et "
                                   "al. 2017))"] and "**Rescaled**" in (run / "MODEL_CARD.md").read_text()
    rows = read_metrics(run)
    assert [r["elastic/global_batch"] for r in rows if "elastic/global_batch" in r] == [32]
    lr = {r["step"]: r["train/lr"] for r in rows if "train/lr" in r}
    loss = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert sorted(lr) == list(range(1, 29))
    # Linear warmup over epoch 1 (25 steps of 16 = 400 samples): the LR of step k (1-based) at world 1
    # is peak x 16(k-1)/400; after the rescale, step 5 + j starts at sample 80 + 32(j-1), at twice the peak.
    assert lr[6] == pytest.approx(lr[5] * 2 * 80 / 64) and lr[7] == pytest.approx(lr[5] * 2 * 112 / 64)
    before, after = sum(loss[k] for k in range(1, 6)) / 5, sum(loss[k] for k in range(6, 11)) / 5
    assert abs(after - before) <= 0.2 * before, (before, after)  # the losses go on: no jump at the resume
