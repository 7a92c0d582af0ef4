"""A model of data-parallel step time on N nodes: compute from a recorded per-GPU rate, the wait for
the slowest rank, and the part of the gradient all-reduce that the backward pass does not hide.
Held against published multi-node runs in pipeline/training/published_scaling.py (docs/scaling.md).

step = compute x (1 + jitter x sqrt(2 ln n)) + exposed all-reduce, for n ranks, where:
- compute is the per-GPU batch over the per-GPU rate; the rate at size s is the recorded rate x
  (recorded size / s)^2 (compute scales with pixels);
- the wait for the slowest rank: a synchronous step ends when the slowest of n ranks does. If one
  rank's step time varies with coefficient of variation `jitter` (data loading, clocks, the OS), the
  expected slowest of n is about mean x (1 + jitter x sqrt(2 ln n)) (the largest of n normal draws).
  It is the only term that explains the published one-node losses (4-5% on 8 GPUs over NVLink, where
  the all-reduce takes about a millisecond), and `jitter` is fitted to the published table;
- the all-reduce, NCCL's two algorithms, whichever is faster (NCCL chooses per call):
  ring: 2(n-1)/n x bytes / bus bandwidth + 2(n-1) hops x the hop latency, per bucket;
  tree: the same bandwidth term + 2 x (log2(nodes) network hops + (GPUs per node - 1) NVLink hops);
  across nodes the bus bandwidth is the node's NICs together (NCCL's "busbw");
- DDP all-reduces bucket by bucket while the backward pass (2/3 of the compute: its FLOPs are twice
  the forward's) runs, so up to `overlap` x the backward time hides the all-reduce; the last bucket
  (the first layers' gradients, ready when the backward pass ends) is never hidden;
- gradients travel in fp32 (DDP reduces in the parameters' dtype; autocast keeps fp32 parameters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

BACKWARD_SHARE = 2 / 3
# Bus bandwidths in Gbit/s (NCCL busbw), stated defaults for common fabrics: the node's NICs together.
FABRICS_GBPS = {"8x 400G NDR InfiniBand (DGX H100)": 3200, "8x 200G HDR InfiniBand (DGX A100)": 1600,
                "4x 100G EFA (p4d)": 400, "100G Ethernet": 100, "25G Ethernet": 25}
DEFAULT_INTERCONNECT_GBPS = 3200
# NVLink all-reduce bus bandwidth within an 8-GPU node, conservatively below H100's NVLink 4 (900 GB/s
# both ways per GPU): 300 GB/s.
DEFAULT_NVLINK_GBPS = 2400
# Fitted to the published table (docs/scaling.md): the value that keeps the largest difference over
# its used points smallest (4.4 points; least squares gives 0.024, at 5.2). Each point alone implies
# 0.007-0.075, the range `pipeline plan` shows (tests/test_scaling_model.py pins both).
DEFAULT_JITTER = 0.0275
JITTER_RANGE = (0.007, 0.075)
# The published points do not constrain the overlap: they fit as well at 0.25 as at 1 (their
# all-reduce is short against the backward pass), and gloo on the CPU twin hides almost nothing
# (docs/benchmarks.md, issue 28). 0.5 is the middle of what fits; the range shown spans 0.25-1.
DEFAULT_OVERLAP = 0.5
OVERLAP_RANGE = (0.25, 1.0)


@dataclass(frozen=True)
class Fabric:
    interconnect_gbps: float = DEFAULT_INTERCONNECT_GBPS  # across nodes
    nvlink_gbps: float = DEFAULT_NVLINK_GBPS  # within one node
    overlap: float = DEFAULT_OVERLAP  # share of the backward pass that can hide communication
    bucket_mb: float = 25.0  # DDP bucket_cap_mb: the last, unhidden bucket
    jitter: float = DEFAULT_JITTER  # coefficient of variation of one rank's step time
    hop_latency_us: float = 10.0  # one network hop of a ring or tree step (NCCL over InfiniBand/RoCE: 5-10 us)
    nvlink_hop_latency_us: float = 2.0  # one hop inside a node


def rate_at(recorded_rate: float, recorded_size: int, size: int) -> float:
    """Per-GPU img/s at `size` px from a rate measured at `recorded_size` (compute ~ pixels)."""
    return recorded_rate * (recorded_size / size) ** 2


def allreduce_seconds(gradient_bytes: float, ranks: int, busbw_gbps: float) -> float:
    """The bandwidth term alone: 2(n-1)/n x bytes over the bus bandwidth."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * gradient_bytes / (busbw_gbps * 1e9 / 8)


def latency_seconds(nodes: int, gpus_per_node: int, fabric: Fabric) -> float:
    """One all-reduce call's hop latencies, NCCL's faster algorithm: a ring's 2(n-1) steps (each as
    slow as its network hop when the ring leaves the node) or a tree's 2 log2(nodes) network hops
    plus the NVLink chain inside each node."""
    ranks = nodes * gpus_per_node
    if ranks <= 1:
        return 0.0
    if nodes == 1:  # a ring over NVLink
        return 2 * (ranks - 1) * fabric.nvlink_hop_latency_us * 1e-6
    ring = 2 * (ranks - 1) * fabric.hop_latency_us
    tree = 2 * (math.ceil(math.log2(nodes)) * fabric.hop_latency_us + (gpus_per_node - 1) * fabric.nvlink_hop_latency_us)
    return min(ring, tree) * 1e-6


def layout(gpus: int, gpus_per_node: int) -> tuple[int, int]:
    """(nodes, GPUs per node) for `gpus`: one node while they fit in one."""
    return (1, gpus) if gpus <= gpus_per_node else (gpus // gpus_per_node, gpus_per_node)


def straggler_factor(ranks: int, jitter: float) -> float:
    """Expected slowest of `ranks` step times over their mean: 1 + jitter x sqrt(2 ln n)."""
    return 1.0 + (jitter * math.sqrt(2 * math.log(ranks)) if ranks > 1 else 0.0)


def step_seconds(per_gpu_batch: int, per_gpu_rate: float, gradient_bytes: float, nodes: int, gpus_per_node: int,
                 fabric: Fabric) -> dict:
    """One optimizer step on nodes x gpus_per_node ranks: compute, the slowest rank's wait,
    communication and what of it is exposed."""
    ranks = nodes * gpus_per_node
    busbw = fabric.interconnect_gbps if nodes > 1 else fabric.nvlink_gbps
    compute = per_gpu_batch / per_gpu_rate
    bucket = fabric.bucket_mb * 2**20
    calls = max(1, math.ceil(gradient_bytes / bucket))
    latency = latency_seconds(nodes, gpus_per_node, fabric)
    comm = allreduce_seconds(gradient_bytes, ranks, busbw) + calls * latency
    last_bucket = allreduce_seconds(min(gradient_bytes, bucket), ranks, busbw) + latency
    exposed = 0.0 if ranks == 1 else max(last_bucket, comm - fabric.overlap * BACKWARD_SHARE * compute)
    wait = compute * (straggler_factor(ranks, fabric.jitter) - 1)
    return {"compute_s": compute, "straggler_s": wait, "allreduce_s": comm, "exposed_s": exposed,
            "step_s": compute + wait + exposed}


def efficiency(per_gpu_batch: int, per_gpu_rate: float, gradient_bytes: float, nodes: int, gpus_per_node: int,
               fabric: Fabric, baseline_gpus: int = 1) -> float:
    """img/s on nodes x gpus_per_node over linear scaling from `baseline_gpus` (1, or one node)."""
    step = step_seconds(per_gpu_batch, per_gpu_rate, gradient_bytes, nodes, gpus_per_node, fabric)["step_s"]
    base = step_seconds(per_gpu_batch, per_gpu_rate, gradient_bytes, *layout(baseline_gpus, gpus_per_node),
                        fabric)["step_s"]
    return base / step


def efficiency_range(per_gpu_batch: int, per_gpu_rate: float, gradient_bytes: float, nodes: int,
                     gpus_per_node: int, fabric: Fabric) -> tuple[float, float]:
    """The efficiency at the ends of what the published table allows: the most jitter with the least
    overlap, and the least jitter with the most."""
    low = replace(fabric, jitter=JITTER_RANGE[1], overlap=min(fabric.overlap, OVERLAP_RANGE[0]))
    high = replace(fabric, jitter=JITTER_RANGE[0], overlap=max(fabric.overlap, OVERLAP_RANGE[1]))
    return (efficiency(per_gpu_batch, per_gpu_rate, gradient_bytes, nodes, gpus_per_node, low),
            efficiency(per_gpu_batch, per_gpu_rate, gradient_bytes, nodes, gpus_per_node, high))


def scaling_table(per_gpu_batch: int, per_gpu_rate: float, gradient_bytes: float, gpus_per_node: int,
                  node_counts: list[int], images_per_epoch: int | None, fabric: Fabric) -> list[dict]:
    """Predicted img/s, scaling efficiency against linear (with its range), and minutes per epoch for
    each node count."""
    rows = []
    for nodes in node_counts:
        step = step_seconds(per_gpu_batch, per_gpu_rate, gradient_bytes, nodes, gpus_per_node, fabric)
        ranks = nodes * gpus_per_node
        img_per_sec = ranks * per_gpu_batch / step["step_s"]
        low, high = efficiency_range(per_gpu_batch, per_gpu_rate, gradient_bytes, nodes, gpus_per_node, fabric)
        rows.append({"nodes": nodes, "gpus": ranks, "img_per_sec": round(img_per_sec, 1),
                     "efficiency": round(img_per_sec / (ranks * per_gpu_rate), 4),
                     "efficiency_range": [round(low, 4), round(high, 4)],
                     "compute_ms": round(step["compute_s"] * 1e3, 2),
                     "straggler_ms": round(step["straggler_s"] * 1e3, 2),
                     "allreduce_ms": round(step["allreduce_s"] * 1e3, 2),
                     "exposed_ms": round(step["exposed_s"] * 1e3, 2),
                     "epoch_minutes": round(images_per_epoch / img_per_sec / 60, 2) if images_per_epoch else None})
    return rows


def node_counts(requested: int) -> list[int]:
    """1, 2, 4, ... up to at least 16 nodes and the requested count."""
    counts, n = [], 1
    while n <= max(16, requested):
        counts.append(n)
        n *= 2
    return sorted(set(counts) | {requested})
