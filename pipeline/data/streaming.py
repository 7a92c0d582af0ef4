"""Which order a run reads its samples in, and what reading shards from object storage needs at
start: the cache settings every process sees, a reachable store, and a cache limit that can hold a
window of shards (refused in one line naming the smallest that works).
"""
from __future__ import annotations

import os
import sys

from pipeline.config import DataConfig
from pipeline.data import object_store, shard_cache
from pipeline.data.object_store import ObjectUrl, is_remote
from pipeline.data.sample_index import SampleIndex
from pipeline.data.types import DataError


def shuffle_mode(cfg: DataConfig) -> str:
    """global | blocks: auto streams (blocks) from object storage and shuffles globally elsewhere."""
    if cfg.shuffle != "auto":
        return cfg.shuffle
    return "blocks" if is_remote(cfg.path) and not cfg.train_list else "global"


def plan_order(cfg: DataConfig, samples) -> dict:
    """ShardPlan's order arguments for this split: the shards and window under blocks, else none."""
    if shuffle_mode(cfg) != "blocks":
        return {}
    shard = getattr(samples, "shard", None)
    if shard is None:
        raise DataError("data.shuffle=blocks needs WebDataset shards (`pipeline prepare shards`), "
                        f"but {cfg.path} is not read as shards (use data.shuffle=global)")
    return {"shard_of": shard, "window": cfg.shuffle_window}


def open_remote(cfg: DataConfig) -> bool:
    """Before anything is read from s3://: the cache settings (for every process of the node) and
    one short request that names a dead endpoint, bad credentials or a missing bucket in one line."""
    if cfg.dataset != "imagefolder":
        raise DataError(f"s3:// data is read as WebDataset shards (data.dataset=imagefolder), not {cfg.dataset}")
    shard_cache.configure(cfg.cache_dir, cfg.cache_limit, cfg.remote_retries)
    object_store.check_reachable(ObjectUrl.parse(cfg.path))
    return True


def check_cache_limit(cfg: DataConfig, splits: dict[str, SampleIndex]) -> None:
    """Refuse a cache limit below a split's working set, naming the smallest limit that works."""
    from pipeline.data.remote_shards import shard_sizes

    blocks = shuffle_mode(cfg) == "blocks"
    ahead = {name: _lookahead_shards(cfg, index) for name, index in splits.items()}
    needs = {name: shard_cache.smallest_limit(shard_sizes(index), (cfg.shuffle_window if name == "train" else 1)
                                              + ahead[name], blocks)
             for name, index in splits.items()}
    need = max(needs.values())
    if cfg.cache_limit and cfg.cache_limit < need:
        why = (f"a window of {cfg.shuffle_window} shards, {ahead['train']} more the loader reads ahead, "
               f"and the next" if blocks else "the whole split under data.shuffle=global")
        raise DataError(f"data.cache_limit={cfg.cache_limit} bytes cannot hold what a node reads at once "
                        f"({why}): the smallest limit that works is {need} bytes ({need / 2**30:.2f} GiB)")
    total = sum(sum(shard_sizes(index)) for index in splits.values())
    if os.environ.get("RANK", "0") != "0":  # said once per job
        return
    print(f"data: {cfg.path} streamed through the node cache at {shard_cache.store_root(ObjectUrl.parse(cfg.path).bucket)} "
          f"({total / 2**20:.1f} MiB of shards, limit {_limit_text(cfg.cache_limit)}, order {shuffle_mode(cfg)})",
          file=sys.stderr, flush=True)


def _limit_text(limit: int) -> str:
    return f"{limit / 2**20:.1f} MiB" if limit else "none"


def prefetcher(cfg: DataConfig, samples, train: bool) -> shard_cache.Prefetcher | None:
    """Whole shards fetched ahead of the reader, for s3:// splits: up to one window ahead, fewer
    when the cache limit leaves less room."""
    if not is_remote(cfg.path) or getattr(samples, "shard", None) is None:
        return None
    from pipeline.data.remote_shards import shard_sizes

    window = cfg.shuffle_window if train and shuffle_mode(cfg) == "blocks" else 1
    ahead = window
    if cfg.cache_limit:
        largest = max(shard_sizes(samples)) or 1
        ahead = min(window, max(0, cfg.cache_limit // largest - window))
    return shard_cache.Prefetcher(samples.shard_paths, samples.shard, ahead)


def _lookahead_shards(cfg: DataConfig, index: SampleIndex) -> int:
    """Shards the loader reads ahead of the step being trained, over the node: torch's DataLoader
    keeps workers x 4 batches in flight (none without workers), DALI its prefetch depth; a rank's
    samples are every world-th position of the order, so L samples ahead span L x world positions."""
    from pipeline.data.backend import resolve_backend
    from pipeline.world import world_info_from_env

    if resolve_backend(cfg) == "dali":
        from pipeline.data.dali_graph import PREFETCH_DEPTH

        batches = PREFETCH_DEPTH + 1
    else:
        batches = cfg.workers * 4
    per_shard = max(1, len(index) // max(1, len(index.shard_paths)))
    return -(-batches * cfg.batch_size * world_info_from_env().world_size // per_shard)
