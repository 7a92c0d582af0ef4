"""The sample index at ImageNet size (issue 34): build, mapped start, memory per process and per worker.

For each source form at 1,281,167 samples (a file list; a synthetic folder tree of empty files; 275
shards, sparse tars with their DALI indexes and info.json, so the index path reads what it would read
on real shards), in fresh processes:
  build    first start with an empty cache: seconds, and the main process's private MB after it
  mapped   a later start (another rank, a requeue): seconds, private MB it added, bytes per sample
  worker   a forked worker that reads every entry: its private (dirty) MB growth
  node     4 ranks x 2 workers, each rank mapping the index and each worker reading every entry:
           the tree's PSS against the same tree with a 1,000-sample list; 8 x 8 extrapolated
Then (--runs) `pipeline train` with a 1,281,167-line data.train_list against a 1,000-line one,
both pointing at the demo images, the same 2 steps: wall time, median of --repeats.

    .venv/bin/python bench/sample_index.py [--count 1281167] [--forms list,folder,shards] [--runs]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLASSES = 1000
SHARDS = 275


def smaps() -> dict[str, int]:
    """kB fields of /proc/self/smaps_rollup."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        out[key] = int(value.split()[0])
    return out


def private_mb() -> float:
    m = smaps()
    return (m["Private_Clean"] + m["Private_Dirty"]) / 1024


def name_of(i: int) -> str:
    wnid = f"n{i % CLASSES:08d}"
    return f"{wnid}/{wnid}_{i}.JPEG"


def make_list(root: Path, count: int) -> Path:
    path = root / "train.txt"
    with open(path, "w") as fh:
        for start in range(0, count, 100_000):
            fh.write("".join(f"{name_of(i)} {i % CLASSES}\n" for i in range(start, min(count, start + 100_000))))
    return path


def make_folder(root: Path, count: int) -> Path:
    split = root / "train"
    for c in range(CLASSES):
        (split / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        open(split / name_of(i), "wb").close()
    return split


def make_shards(root: Path, count: int) -> Path:
    """275 sparse tars of ImageNet's shard size with their wds2idx indexes and info.json labels."""
    split = root / "train"
    split.mkdir(parents=True)
    per = -(-count // SHARDS)
    entries = []
    for s in range(SHARDS):
        ids = range(s * per, min(count, (s + 1) * per))
        lines, offset = [f"v1.2 {len(ids)}"], 512
        for i in ids:
            key = f"{name_of(i).split('/')[1][:-5]}"
            lines.append(f"jpg {offset} 110000 {key}.jpg cls {offset + 110592} 3 {key}.cls")
            offset += 110592 + 1024
        tar = split / f"train-{s:04d}.tar"
        with open(tar, "wb") as fh:
            fh.truncate(offset + 1024)
        tar.with_suffix(".idx").write_text("\n".join(lines) + "\n")
        entries.append({"name": tar.name, "bytes": offset + 1024, "labels": [i % CLASSES for i in ids]})
    (split / "info.json").write_text(json.dumps({"classes": [f"n{c:08d}" for c in range(CLASSES)],
                                                 "shards": entries}))
    return split


def old_list(path: Path) -> list[tuple[str, int]]:
    """The file list as it was read before issue 34 (Python tuples), the baseline of the same run."""
    samples = []
    for line in path.read_text().splitlines():
        name, _, label = line.strip().rpartition(" ")
        samples.append((str(path.parent / name.strip()), int(label)))
    return samples


def open_index(form: str, source: Path):
    if form == "old-list":
        return old_list(source)
    if form == "shards":
        from pipeline.data.shards import scan_shards

        return scan_shards(source)[1]
    from pipeline.data.folder import read_file_list, scan_folder

    return (read_file_list if form == "list" else scan_folder)(source)[1]


def _read_all(index, queue) -> None:
    before = smaps()["Private_Dirty"]
    for i in range(len(index)):
        index[i]
    queue.put((smaps()["Private_Dirty"] - before) / 1024)


def one_start(form: str, source: str) -> dict:
    """Run in a fresh process: open the index, then fork a worker that reads every entry."""
    import numpy  # noqa: F401 - imported before the baseline: its own pages are not the index's

    from pipeline.data import folder, sample_index, shards  # noqa: F401

    base, base_dirty = private_mb(), smaps()["Private_Dirty"] / 1024
    start = time.perf_counter()
    index = open_index(form, Path(source))
    seconds = time.perf_counter() - start
    added, dirty = private_mb() - base, smaps()["Private_Dirty"] / 1024 - base_dirty
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_read_all, args=(index, queue))
    worker.start()
    growth = queue.get()
    worker.join()
    return {"seconds": seconds, "private_mb": added, "dirty_mb": dirty, "bytes_per_sample": added * 2**20 / len(index),
            "worker_growth_mb": growth, "built": sample_index.STATS["built"], "samples": len(index)}


def _rank(form: str, source: str, workers: int, ready, go, done) -> None:
    from pipeline.data import folder, shards  # noqa: F401 - every form's tree holds the same modules

    index = open_index(form, Path(source))
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            for i in range(len(index)):
                index[i]
            ready.put(os.getpid())
            go.wait()
            os._exit(0)
        pids.append(pid)
    ready.put(os.getpid())
    go.wait()
    for pid in pids:
        os.waitpid(pid, 0)
    done.put(1)


def node_pss(form: str, source: Path, ranks: int = 4, workers: int = 2) -> float:
    """PSS (MB) of `ranks` processes, each with `workers` forked readers, once all have read everything."""
    ctx = multiprocessing.get_context("fork")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_rank, args=(form, str(source), workers, ready, go, done)) for _ in range(ranks)]
    for p in procs:
        p.start()
    pids = [ready.get(timeout=600) for _ in range(ranks * (workers + 1))]
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    go.set()
    for p in procs:
        p.join()
    return total / 1024


def fresh(form: str, source: Path, cache: Path) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(REPO)!r}); from bench.sample_index import one_start; " \
           f"print(json.dumps(one_start({form!r}, {str(source)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PIPELINE_CACHE_DIR": str(cache)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_run(listed: Path, data: Path, run_dir: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "pipeline"), "train", f"data.path={data}", f"data.train_list={listed}",
                    "model.name=resnet20", "data.image_size=32", "data.val_image_size=32", "data.batch_size=32",
                    "data.workers=2", "trainer.max_steps=2", "trainer.epochs=1", f"trainer.run_dir={run_dir}",
                    "logging.wandb.mode=disabled"], capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"pipeline train failed: {proc.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1_281_167)
    p.add_argument("--forms", default="list,old-list,folder,shards")
    p.add_argument("--runs", action="store_true", help="also time `pipeline train` at --count vs 1,000 listed samples")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sample-index-"))
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")})
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags {' '.join(flags)}; "
          f"{args.count:,} samples; {time.strftime('%Y-%m-%d')}")
    (work / "small").mkdir(parents=True, exist_ok=True)
    small = make_list(work / "small", 1000)
    os.environ["PIPELINE_CACHE_DIR"] = str(work / "small" / "cache")
    baseline = node_pss("list", small)
    print(f"baseline node tree (1,000-sample list, 4 ranks x 2 workers): PSS {baseline:.0f} MB")
    # Private = Private_Clean + Private_Dirty. A mapped index's pages are file pages of the page cache:
    # "private" (clean) while one process maps them, shared as soon as another does (the node PSS).
    print("| form | first build s | build private MB | start s (mapped, or read) | private MB | of it dirty MB | "
          "B/sample | worker growth MB (dirty) | node PSS over baseline MB | 8x8 extrapolated MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for form in filter(None, args.forms.split(",")):
        if form == "old-list":  # the tuples of the code before: no cache, each start reads the list
            source = work / "list" / "train.txt"
            starts = [fresh(form, source, work / "unused") for _ in range(args.repeats)]
            os.environ["PIPELINE_CACHE_DIR"] = str(work / "unused")
            tree = node_pss(form, source) - baseline
            dirty = statistics.median(m["dirty_mb"] for m in starts)
            growth = statistics.median(m["worker_growth_mb"] for m in starts)
            print(f"| list as Python tuples (before) | - | - | {statistics.median(m['seconds'] for m in starts):.2f} | "
                  f"{statistics.median(m['private_mb'] for m in starts):.0f} | {dirty:.0f} | "
                  f"{statistics.median(m['bytes_per_sample'] for m in starts):.0f} | {growth:.0f} | {tree:.0f} | "
                  f"{8 * dirty + 64 * growth:.0f} |", flush=True)
            continue
        root = work / form
        made = time.perf_counter()
        source = {"list": root / "train.txt"}.get(form, root / "train")
        if not (root / f"made-{args.count}").exists():  # a rerun with --workdir reuses the generated source
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            source = {"list": make_list, "folder": make_folder, "shards": make_shards}[form](root, args.count)
            (root / f"made-{args.count}").touch()
        made = time.perf_counter() - made
        cache = root / "cache"
        shutil.rmtree(cache, ignore_errors=True)  # the first start builds
        built = fresh(form, source, cache)
        # Written back before the mapped starts: a page the builder wrote and the kernel has not yet
        # flushed counts as Private_Dirty in every process that maps it, which is no copy.
        os.sync()
        mapped = [fresh(form, source, cache) for _ in range(args.repeats)]
        assert built["built"] == 1 and all(m["built"] == 0 for m in mapped), (built, mapped)
        os.environ["PIPELINE_CACHE_DIR"] = str(cache)
        tree = node_pss(form, source) - baseline
        ranks_part = statistics.median(m["dirty_mb"] for m in mapped)
        workers_part = statistics.median(m["worker_growth_mb"] for m in mapped)
        shared = max(0.0, tree - 4 * ranks_part - 8 * workers_part)  # the mapped pages, once per node
        extrapolated = shared + 8 * ranks_part + 64 * workers_part
        print(f"| {form} ({made:.0f} s to generate) | {built['seconds']:.2f} | {built['private_mb']:.0f} | "
              f"{statistics.median(m['seconds'] for m in mapped):.3f} | "
              f"{statistics.median(m['private_mb'] for m in mapped):.1f} | {ranks_part:.1f} | "
              f"{statistics.median(m['bytes_per_sample'] for m in mapped):.1f} | {workers_part:.2f} | {tree:.0f} | "
              f"{extrapolated:.0f} |", flush=True)
    if args.runs:
        from pipeline.data.demo import make_demo_data

        data = work / "demo"
        if not data.exists():
            make_demo_data(data)
        classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
        # Classes interleaved, so that the 1,000-line list holds every class (the label check needs it).
        images = [f for group in zip(*(sorted((data / "train" / c).iterdir()) for c in classes)) for f in group]
        for count in (1000, args.count):
            listed = work / f"runs-{count}.txt"
            with open(listed, "w") as fh:
                for start in range(0, count, 100_000):
                    fh.write("".join(f"{images[i % len(images)]} {classes.index(images[i % len(images)].parent.name)}\n"
                                     for i in range(start, min(count, start + 100_000))))
            times = [train_run(listed, data, work / f"run-{count}-{r}") for r in range(args.repeats + 1)]
            print(f"pipeline train, {count:,}-line train list, 2 steps: first (builds the index) {times[0]:.1f} s, "
                  f"later starts median {statistics.median(times[1:]):.1f} s ({', '.join(f'{t:.1f}' for t in times[1:])})",
                  flush=True)


if __name__ == "__main__":
    main()
