"""A model of data-parallel step time on N nodes: compute from a recorded per-GPU rate, plus the part
of the gradient all-reduce that the backward pass does not hide.

Ring all-reduce: each of n ranks sends and receives 2(n-1)/n x the gradient bytes, so its time is
2(n-1)/n x bytes / bus bandwidth, the "busbw" NCCL's all_reduce_perf prints. Within one node the
ring runs over NVLink; across nodes its slowest hop is the network, and NCCL runs one ring per NIC,
so the bus bandwidth of a multi-node job is about the node's network bandwidth, all NICs together.

Assumptions, stated because they decide the answer:
- compute scales with pixels: the rate at size s is the recorded rate x (recorded size / s)^2;
- the backward pass is 2/3 of the step's compute (its FLOPs are twice the forward's);
- DDP all-reduces bucket by bucket while the backward pass runs, so up to `overlap` x the backward
  time hides communication (1.0: NCCL's own stream never slows the kernels; 0: no overlap); the last
  bucket (the first layers' gradients, done when the backward pass ends) is never hidden;
- gradients travel in fp32 (DDP reduces in the parameters' dtype; autocast keeps fp32 parameters);
- no latency term: at 25 MB buckets a ring step's microseconds are small against the transfer.
"""
from __future__ import annotations

from dataclasses import dataclass

BACKWARD_SHARE = 2 / 3
# Bus bandwidths in Gbit/s (NCCL busbw), stated defaults for common fabrics: the node's NICs together.
FABRICS_GBPS = {"8x 400G NDR InfiniBand (DGX H100)": 3200, "8x 200G HDR InfiniBand (DGX A100)": 1600,
                "4x 100G EFA (p4d)": 400, "100G Ethernet": 100, "25G Ethernet": 25}
DEFAULT_INTERCONNECT_GBPS = 3200
# NVLink all-reduce bus bandwidth within an 8-GPU node, conservatively below H100's NVLink 4 (900 GB/s
# both ways per GPU): 300 GB/s.
DEFAULT_NVLINK_GBPS = 2400


@dataclass(frozen=True)
class Fabric:
    interconnect_gbps: float = DEFAULT_INTERCONNECT_GBPS  # across nodes
    nvlink_gbps: float = DEFAULT_NVLINK_GBPS  # within one node
    overlap: float = 1.0  # share of the backward pass that can hide communication
    bucket_mb: float = 25.0  # DDP bucket_cap_mb: the last, unhidden bucket


def rate_at(recorded_rate: float, recorded_size: int, size: int) -> float:
    """Per-GPU img/s at `size` px from a rate measured at `recorded_size` (compute ~ pixels)."""
    return recorded_rate * (recorded_size / size) ** 2


def allreduce_seconds(gradient_bytes: float, ranks: int, busbw_gbps: float) -> float:
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * gradient_bytes / (busbw_gbps * 1e9 / 8)


def step_seconds(per_gpu_batch: int, per_gpu_rate: float, gradient_bytes: float, nodes: int, gpus_per_node: int,
                 fabric: Fabric) -> dict:
    """One optimizer step on nodes x gpus_per_node ranks: compute, communication, what is exposed."""
    ranks = nodes * gpus_per_node
    busbw = fabric.interconnect_gbps if nodes > 1 else fabric.nvlink_gbps
    compute = per_gpu_batch / per_gpu_rate
    comm = allreduce_seconds(gradient_bytes, ranks, busbw)
    last_bucket = allreduce_seconds(min(gradient_bytes, fabric.bucket_mb * 2**20), ranks, busbw)
    exposed = 0.0 if ranks == 1 else max(last_bucket, comm - fabric.overlap * BACKWARD_SHARE * compute)
    return {"compute_s": compute, "allreduce_s": comm, "exposed_s": exposed, "step_s": compute + exposed}


def scaling_table(per_gpu_batch: int, per_gpu_rate: float, gradient_bytes: float, gpus_per_node: int,
                  node_counts: list[int], images_per_epoch: int | None, fabric: Fabric) -> list[dict]:
    """Predicted img/s, scaling efficiency against linear, and minutes per epoch for each node count."""
    rows = []
    for nodes in node_counts:
        step = step_seconds(per_gpu_batch, per_gpu_rate, gradient_bytes, nodes, gpus_per_node, fabric)
        ranks = nodes * gpus_per_node
        img_per_sec = ranks * per_gpu_batch / step["step_s"]
        rows.append({"nodes": nodes, "gpus": ranks, "img_per_sec": round(img_per_sec, 1),
                     "efficiency": round(img_per_sec / (ranks * per_gpu_rate), 4),
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
