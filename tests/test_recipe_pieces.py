"""The modern recipes' other pieces (issue 33), each against its reference: repeated augmentation
(RASampler's semantics in ShardPlan), exact mid-epoch resume of the augmented batches in both
backends, BCE with a target threshold (timm), DropPath (timm's per-block rule), the EMA (torchvision's
V2 rule, against torch's AveragedModel run as torchvision's train.py runs it)."""
import collections
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import load_config
from pipeline.data import Placement, build_data
from pipeline.data.sampler import ShardPlan
from pipeline.training.elastic import adapt
from pipeline.training.ema import build_ema, torchvision_decay
from pipeline.training.loss import make_loss


def _stream(n, world, batch, repeats, epoch=0, accumulation=1):
    """Per optimizer step: the (index, seed) pairs of every rank, in rank order."""
    plans = [ShardPlan(n, r, world, batch, True, seed=3, accumulation=accumulation, repeats=repeats) for r in range(world)]
    per_rank = [p.batches(epoch) for p in plans]
    steps = len(per_rank[0]) // accumulation
    return [[tuple(pair) for r in range(world) for b in per_rank[r][s * accumulation:(s + 1) * accumulation] for pair in b]
            for s in range(steps)], per_rank


@pytest.mark.parametrize("world", [1, 2, 3])
def test_repeated_augmentation_copies_each_sample_k_times_on_different_ranks(world):
    k, n, batch = 3, 120, 10  # 120 = 4 steps x world 3 x 10: whole global batches at every world here
    n = 120 if world != 2 else 100
    _, per_rank = _stream(n, world, batch, k)
    seen = collections.Counter()
    ranks_of, seeds_of = collections.defaultdict(set), collections.defaultdict(set)
    for rank, batches in enumerate(per_rank):
        for index, seed in (pair for b in batches for pair in b):
            seen[index] += 1
            ranks_of[index].add(rank)
            seeds_of[index].add(seed)
    total = -(-n // (world * batch)) * world * batch
    assert sum(seen.values()) == total and len(seen) == -(-total // k)
    assert sorted(set(seen.values())) == ([k] if total % k == 0 else [total % k, k])  # a cut last sample only
    assert all(len(seeds_of[i]) == seen[i] for i in seen)  # every copy its own augmentation
    assert all(len(ranks_of[i]) == min(world, seen[i]) for i in seen)  # copies spread over the ranks


def test_repeated_augmentation_stream_is_the_same_at_any_world_with_one_global_batch():
    """The global stream depends on the global batch alone: a resume 2 -> 1 or 1 -> 2 (accumulation
    2 <-> 1) goes on with the same samples and the same augmentation seeds at every step."""
    two, _ = _stream(100, 2, 8, 4)
    one, _ = _stream(100, 1, 8, 4, accumulation=2)
    assert [sorted(step) for step in two] == [sorted(step) for step in one]
    for epoch in (0, 1):  # 2 x 8 x 3 and 3 x 8 x 2: global batch 48, as tests/test_elastic.py resumes it
        two, _ = _stream(400, 2, 8, 2, epoch=epoch, accumulation=3)
        three, _ = _stream(400, 3, 8, 2, epoch=epoch, accumulation=2)
        assert [sorted(step) for step in two] == [sorted(step) for step in three] and len(two) == 9
    plan = ShardPlan(100, 1, 2, 8, True, seed=3, repeats=4)
    assert plan.batches(1, start_step=3) == plan.batches(1)[3:]  # mid-epoch resume: the tail of the same pass
    assert plan.batches(0) != plan.batches(1)  # a new order each epoch
    plain = ShardPlan(100, 0, 2, 8, True, seed=3)
    assert plain.batches(0) == ShardPlan(100, 0, 2, 8, True, seed=3, repeats=1).batches(0)  # unchanged without it


def test_resume_line_says_what_the_stream_does():
    cfg = load_config(None, ["data.repeat_aug=3", "data.batch_size=8"])
    recorded = {"world_size": 2, "batch_size": 8, "accumulation": 1, "global_step": 5, "epoch": 0, "step_in_epoch": 5,
                "checkpoint": "ckpt"}
    adapted, line = adapt(cfg, 1, recorded)
    assert adapted.optim.accumulation == 2
    assert line.endswith("repeated augmentation x3: the epoch's stream of copies is unchanged, each sample's copies "
                         "now spread over 1 of 1 ranks")


@pytest.mark.parametrize("backend, policy", [("torchvision", "ta_wide"), ("dali", "ta_wide"),
                                             ("dali", "rand-m7-mstd0.5-inc1")])
def test_augmented_batches_resume_bit_for_bit(demo_data, backend, policy):
    """A pass started at step 2 gives exactly the uninterrupted pass's batches 2.. (policy, random
    erasing and repeated augmentation included); the erased regions are the same in both backends."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    cfg = load_config(None, [f"data.path={demo_data}", f"data.backend={backend}", f"data.auto_augment={policy}",
                             "data.random_erase=0.5", "data.repeat_aug=3", "data.batch_size=16", "data.workers=1"])
    data = build_data(cfg.data, Placement(torch.device("cpu"), False, 0, 2), seed=5)
    data.train.set_epoch(1)
    full = [b for _, b in zip(range(5), data.train)]
    data.train.set_epoch(1, start_step=2)
    resumed = [b for _, b in zip(range(3), data.train)]
    for (x, y), (rx, ry) in zip(full[2:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    erased = (full[0][0] == 0).all(1)
    assert 0 < erased.float().mean() < 0.3
    if backend == "dali":  # the torchvision backend erases the same regions of the same samples
        other = build_data(dataclasses.replace(cfg.data, backend="torchvision", auto_augment="none"),
                           Placement(torch.device("cpu"), False, 0, 2), seed=5)
        other.train.set_epoch(1)
        assert torch.equal((next(iter(other.train))[0] == 0).all(1), erased)


def test_bce_with_a_threshold_is_timms():
    """optim.loss=bce: timm's BinaryCrossEntropy, composed with mixup as timm's train.py composes it."""
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    cfg = load_config(None, ["optim.loss=bce", "optim.bce_target_thresh=0.2", "optim.label_smoothing=0.1"])
    mixup, loss = make_loss(cfg, 10)
    assert mixup is None
    off, on = 0.1 / 10, 1 - 0.1 + 0.1 / 10
    target = torch.full((8, 10), off).scatter_(1, labels[:, None], on)
    assert loss(logits, labels) == pytest.approx(F.binary_cross_entropy_with_logits(logits, (target > 0.2).float()).item())
    cfg = load_config(None, ["optim.loss=bce", "optim.bce_target_thresh=0.2", "data.mixup=0.2", "data.cutmix=1.0"])
    mixup, loss = make_loss(cfg, 10)
    soft = torch.full((8, 10), 0.0).scatter_(1, labels[:, None], 0.7)
    soft[torch.arange(8), (labels + 1) % 10] += 0.3
    assert loss(logits, soft) == pytest.approx(F.binary_cross_entropy_with_logits(logits, (soft > 0.2).float()).item())
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.switch_prob, mixup.mode) == (0.2, 1.0, 0.5, "batch")


def test_drop_path_follows_timms_rule_and_keeps_torchvisions_keys():
    import timm
    import torchvision

    from pipeline.models import build_model

    ours = build_model(load_config(None, ["model.name=resnet50", "model.drop_path_rate=0.05"]).model, 1000)
    ours.load_state_dict(torchvision.models.resnet50().state_dict(), strict=True)
    reference = timm.create_model("resnet50", drop_path_rate=0.05)
    rates = lambda m: [float(getattr(b.drop_path, "drop_prob", 0.0)) for s in (1, 2, 3, 4)  # noqa: E731
                       for b in getattr(m, f"layer{s}")]
    assert rates(ours) == pytest.approx(rates(reference)) and rates(ours)[-1] == pytest.approx(0.05)
    small = build_model(load_config(None, ["model.name=resnet20", "model.drop_path_rate=0.5"]).model, 10).eval()
    x = torch.randn(4, 3, 16, 16)
    plain = build_model(load_config(None, ["model.name=resnet20"]).model, 10).eval()
    plain.load_state_dict(small.state_dict())
    assert torch.equal(small(x), plain(x))  # evaluation: every branch kept
    small.train(), plain.train()
    assert not torch.allclose(small(x), plain(x))
    with pytest.raises(ValueError, match="needs a shortcut"):
        build_model(load_config(None, ["model.name=plain20", "model.drop_path_rate=0.1"]).model, 10)


def test_ema_follows_torchvisions_rule():
    """Against torch's AveragedModel driven as torchvision's references/classification/train.py does:
    update every 32 steps with decay 1 - (1 - 0.99998) x world x batch x 32 / epochs, and the average
    reset during the warmup (here 64 steps; steps per epoch are a multiple of 32)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    cfg = load_config(None, ["trainer.ema_decay=0.99998", "trainer.ema_every=32", "trainer.ema_torchvision_rule=true",
                             "trainer.epochs=600"]).trainer
    decay = torchvision_decay(0.99998, 1024, 32, 600)
    assert decay == pytest.approx(1 - 2e-5 * 1024 * 32 / 600)
    ours = build_ema(model, cfg, global_batch=1024)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    warmup = 64
    for step in range(320):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        ours.step(model, step, warmup)
        if step % 32 == 0:
            reference.update_parameters(model)
            if step < warmup:
                reference.n_averaged.fill_(0)
    for mine, theirs in zip(ours.module.state_dict().values(), reference.module.state_dict().values()):
        assert torch.allclose(mine.float(), theirs.float(), atol=1e-5)


def test_a_dead_worker_is_named_when_its_error_lands_inside_a_checkpoint_write():
    """torch's SIGCHLD handler raises wherever the loop is; inside torch.save the error that comes
    out is torch.save's own ("unexpected pos", seen once in CI). The trainer then asks the loader,
    which finds the dead worker the way torch names it."""
    import types

    from pipeline.data.planned import TorchLoader
    from pipeline.training.state import TrainState
    from pipeline.training.guards import naming_the_step_of_a_dead_loader_worker

    dead = types.SimpleNamespace(is_alive=lambda: False, exitcode=-9, pid=4242)
    loader = TorchLoader.__new__(TorchLoader)
    loader._loader = types.SimpleNamespace(_iterator=types.SimpleNamespace(_workers=[dead]))
    assert loader.dead_worker().startswith("DataLoader worker (pid 4242) is killed by signal: SIGKILL")
    state = TrainState()
    state.global_step = 17
    with pytest.raises(RuntimeError, match=r"data loader worker died at step 17: DataLoader worker \(pid 4242\) .*"
                                           r"\(\[enforce fail at inline_container.cc:672\] . unexpected pos"):
        with naming_the_step_of_a_dead_loader_worker(state, loader):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 528064 vs 527960")
    alive = TorchLoader.__new__(TorchLoader)
    alive._loader = None
    with pytest.raises(RuntimeError, match="^something else$"):
        with naming_the_step_of_a_dead_loader_worker(state, alive):
            raise RuntimeError("something else")
