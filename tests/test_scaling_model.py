"""The scaling model behind `pipeline plan` (issue 46), pinned to the published multi-node runs in
pipeline/training/published_scaling.py and shown on docs/scaling.md."""
import json
import math

import pytest

from pipeline.training import published_scaling as published
from pipeline.training import scaling
from tests.helpers import REPO, run_cli


def test_every_used_published_point_is_within_five_points():
    rows = published.rows()
    used = [r for r in rows if r["used"]]
    assert len({r["run"] for r in used}) >= 4 and len(used) >= 10
    misses = {(r["run"], r["gpus"]): round(r["points"], 1) for r in used if abs(r["points"]) > published.TOLERANCE_POINTS}
    assert misses == {}
    assert round(max(abs(r["points"]) for r in used), 1) == 4.4  # the figure docs/scaling.md gives
    # The point the docs call unexplained is still outside: if a change explains it, the docs must say so.
    unused = [r for r in rows if not r["used"]]
    assert unused and all(r["points"] > published.TOLERANCE_POINTS for r in unused)


def test_the_fitted_jitter_and_its_range_are_what_the_table_implies():
    def implied(run, gpus, efficiency):
        low, high = 0.0, 0.5
        for _ in range(60):  # the model's efficiency falls as jitter grows
            mid = (low + high) / 2
            low, high = (mid, high) if published.predicted(run, gpus, published.fabric_for(run, jitter=mid)) > efficiency \
                else (low, mid)
        return mid

    values = [implied(run, n, e) for run in published.RUNS if run.used for n, e in run.points]
    assert scaling.JITTER_RANGE == (round(min(values), 3), round(max(values), 3))

    def worst(jitter):
        return max(abs(r["points"]) for r in published.rows({"jitter": jitter}) if r["used"])
    # the default is the minimax fit: moving it either way makes the worst point worse
    assert worst(scaling.DEFAULT_JITTER) < min(worst(scaling.DEFAULT_JITTER - 0.001), worst(scaling.DEFAULT_JITTER + 0.001))
    # and the overlap is not pinned by the table: 0.25 to 1 fit alike (the docs' claim)
    assert abs(worst(scaling.DEFAULT_JITTER) - max(abs(r["points"]) for r in published.rows({"overlap": 0.25})
                                                   if r["used"])) < 0.5


def test_latency_straggler_and_nccl_algorithm_terms():
    assert scaling.straggler_factor(1, 0.03) == 1.0
    assert scaling.straggler_factor(8, 0.03) == pytest.approx(1 + 0.03 * math.sqrt(2 * math.log(8)))
    fabric = scaling.Fabric(hop_latency_us=10.0, nvlink_hop_latency_us=2.0)
    assert scaling.latency_seconds(1, 8, fabric) == pytest.approx(2 * 7 * 2e-6)  # a ring over NVLink
    assert scaling.latency_seconds(2, 1, fabric) == pytest.approx(2 * 1 * 10e-6)  # ring: 2 hops < tree's
    # 64 nodes x 8: a ring's 1022 network steps against a tree's 2 x (6 + 7 NVLink) hops
    assert scaling.latency_seconds(64, 8, fabric) == pytest.approx(2 * (6 * 10e-6 + 7 * 2e-6))
    step = scaling.step_seconds(256, 1000.0, 100e6, 4, 8, fabric)
    assert step["straggler_s"] == pytest.approx(0.256 * fabric.jitter * math.sqrt(2 * math.log(32)))
    assert step["step_s"] == pytest.approx(step["compute_s"] + step["straggler_s"] + step["exposed_s"])


def test_docs_show_the_table_the_code_computes():
    page = (REPO / "docs" / "scaling.md").read_text()
    assert published.markdown() in page and published.frameworks_markdown() in page


def test_plan_for_eight_h100_nodes_is_what_the_table_supports():
    proc = run_cli("plan", "--config", "configs/imagenet/resnet50.yaml", "--nodes", "8", "--gpus-per-node", "8",
                   quick=True)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    row = next(r for r in plan["scaling"] if r["nodes"] == 8)
    at_scale = [e for run in published.RUNS if run.used for n, e in run.points if n >= 32]
    assert min(at_scale) <= row["efficiency"] <= max(at_scale)  # 87.8-93.8% published at 32-512 GPUs
    low, high = row["efficiency_range"]
    assert low < row["efficiency"] < high
    assert "basis at 8 node(s): the nearest published point is " in proc.stdout
    assert f"scaling efficiency {row['efficiency']:.1%} (published runs allow" in plan["estimate"]
    bad = run_cli("plan", "--config", "configs/imagenet/resnet50.yaml", "--jitter", "1.5", quick=True)
    assert bad.returncode == 2 and "--jitter" in bad.stderr
