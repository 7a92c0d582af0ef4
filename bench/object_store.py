"""Training data from object storage against the same shards on local disk (issue 42), on a real S3
server started here (SeaweedFS, tests/s3_server.py) on the loopback.

For each backend, one train epoch of the loader (decode + augment, no model) at 224 px, per source:
  local      the shards on local disk, data.shuffle=blocks (the same order as s3://)
  s3-100     s3://, cache limit = all the train shards: epoch 1 cold (empty cache), epoch 2 warm
  s3-30      s3://, cache limit = 30% of the train shards (at least a window plus one): epochs 1, 2
img/s are medians over --repeats (a fresh cache for each repeat's cold epoch); GETs and bytes per
epoch come from the cache's ledger; start = build_data (listing, index, cache check), cold and warm.

  python bench/object_store.py /tmp/bench-s3 --train-per-class 100 --repeats 3
  python bench/object_store.py /tmp/bench-s3 --scale 10000   # listing + index of 10,000 shards
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.s3_server import SeaweedS3  # noqa: E402

BUCKET = "bench-data"
BATCH = 16  # per step: small, so that the loader's lookahead (2 workers x 4 batches) spans few shards


def run_epochs(path: str, backend: str, extra: list[str], epochs: int, cache: Path) -> dict:
    """One process: build the loader (timed), then `epochs` train epochs (each timed)."""
    code = f"""
import json, sys, time
import torch
t0 = time.perf_counter()
from pipeline.config import load_config
from pipeline.data.factory import build_data
from pipeline.data.types import Placement
cfg = load_config(None, {[f"data.path={path}", f"data.backend={backend}", f"data.batch_size={BATCH}", "data.workers=2",
                          "data.image_size=224", "data.make_demo=false", *extra]!r})
t1 = time.perf_counter()
bundle = build_data(cfg.data, Placement(torch.device("cpu"), True), seed=0)
start = time.perf_counter() - t1
out = {{"start_s": start, "epochs": []}}
for epoch in range({epochs}):
    bundle.train.set_epoch(epoch, 0)
    t = time.perf_counter(); wall = time.time(); n = 0
    for x, y in bundle.train:
        n += len(y)
    out["epochs"].append({{"images": n, "s": time.perf_counter() - t, "from": wall, "to": time.time()}})
print("RESULT " + json.dumps(out))
"""
    env = {**os.environ, "PIPELINE_S3_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def ledger(cache: Path) -> list[dict]:
    found = list(cache.rglob("ledger.jsonl"))
    return [json.loads(line) for f in found for line in f.read_text().splitlines()]


def loader_bench(args, server: SeaweedS3, local: Path) -> dict:
    url = f"s3://{BUCKET}/data"
    train_sizes = sorted((f.stat().st_size for f in (local / "train").glob("*.tar")), reverse=True)
    total = sum(train_sizes)
    window = args.window
    limits = {"s3-100": total + sum((f.stat().st_size for f in (local / "val").glob("*.tar"))),
              "s3-30": int(0.3 * total)}
    results: dict = {"train_bytes": total, "train_shards": len(train_sizes), "limits": limits, "runs": {}}
    work = Path(args.dir) / "caches"
    for backend in args.backends:
        for source in ("local", "s3-100", "s3-30"):
            rows = []
            server_cpu = _cpu_seconds(server.proc.pid)
            for repeat in range(args.repeats):
                cache = work / f"{backend}-{source}-{repeat}"
                shutil.rmtree(cache, ignore_errors=True)
                extra = [f"data.shuffle_window={window}", "data.shuffle=blocks"]
                if source == "local":
                    rows.append((run_epochs(str(local), backend, extra, 2, cache), []))
                    continue
                extra.append(f"data.cache_limit={limits[source]}")
                out = run_epochs(url, backend, extra, 2, cache)
                rows.append((out, ledger(cache)))
            # The server shares this machine's cores with the loader: its CPU per repeat (2 epochs).
            record = {"start_s": [r["start_s"] for r, _ in rows],
                      "server_cpu_s_per_repeat": round((_cpu_seconds(server.proc.pid) - server_cpu) / args.repeats, 2)}
            for epoch in range(2):
                rates = [r["epochs"][epoch]["images"] / r["epochs"][epoch]["s"] for r, _ in rows]
                record[f"epoch{epoch + 1}_img_s"] = rates
                record[f"epoch{epoch + 1}_median"] = statistics.median(rates)
            if rows[0][1]:  # GETs and bytes of each epoch, by the ledger's timestamps (start-up's go to epoch 1)
                for epoch in range(2):
                    end = [r["epochs"][epoch]["to"] for r, _ in rows]
                    begin = [r["epochs"][epoch - 1]["to"] if epoch else 0 for r, _ in rows]
                    got = [[x for x in rl if b < x["t"] <= e] for (r, rl), b, e in zip(rows, begin, end)]
                    record[f"epoch{epoch + 1}_gets"] = [len(g) for g in got]
                    record[f"epoch{epoch + 1}_mb"] = [round(sum(x["bytes"] for x in g) / 2**20, 1) for g in got]
            results["runs"][f"{backend}/{source}"] = record
            print(json.dumps({f"{backend}/{source}": record}), flush=True)
    return results


def scale_bench(args, server: SeaweedS3) -> dict:
    """`--scale N` shards of `--per-shard` samples: tiny placeholder tars whose sizes info.json lists,
    real .idx files (N x per-shard lines), then a cold and a warm index build through the pipeline."""
    import boto3
    from concurrent.futures import ThreadPoolExecutor

    env = server.env()
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    try:
        client.create_bucket(Bucket=BUCKET)
    except Exception:  # noqa: BLE001 - exists
        pass
    prefix = f"scale{args.scale}/train"
    per = args.per_shard
    tar_body = b"\0" * 10240

    def put(n: int) -> dict:
        name = f"train-{n:06d}"
        lines = [f"v1.2 {per}"] + [f"jpg {512 + 1024 * i} 110000 k{n}_{i}.jpg cls {512 + 1024 * i + 110000} 3 k{n}_{i}.cls"
                                   for i in range(per)]
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}.idx", Body=("\n".join(lines) + "\n").encode())
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}.tar", Body=tar_body)
        return {"name": f"{name}.tar", "bytes": len(tar_body), "samples": per, "labels": [(n * per + i) % 1000 for i in range(per)]}

    t = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        shards = list(pool.map(put, range(args.scale)))
    info = {"format": "webdataset", "classes": [f"c{i}" for i in range(1000)], "shards": shards}
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/info.json", Body=json.dumps(info).encode())
    upload_s = time.perf_counter() - t
    code = f"""
import json, resource, time
t = time.perf_counter()
from pipeline.data import shard_cache
from pipeline.data.remote_shards import scan_remote_shards
shard_cache.configure("", 0, 5)
t1 = time.perf_counter()
classes, index = scan_remote_shards("s3://{BUCKET}/{prefix}")
print("RESULT " + json.dumps({{"samples": len(index), "build_s": time.perf_counter() - t1,
      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = {"shards": args.scale, "samples_per_shard": per, "upload_s": upload_s}
    cache = Path(args.dir) / "scale-cache"
    shutil.rmtree(cache, ignore_errors=True)
    for label in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, **env, "PIPELINE_S3_CACHE_DIR": str(cache), "PIPELINE_CACHE_DIR": str(cache)})
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        out[label] = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        print(json.dumps({label: out[label]}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--shard-mb", type=float, default=4.0)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=["torchvision", "dali"])
    p.add_argument("--scale", type=int, default=0, help="instead: list and index this many shards")
    p.add_argument("--per-shard", type=int, default=1200)
    args = p.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    server = SeaweedS3(root / "server")
    server.start()
    os.environ.update(server.env())
    try:
        if args.scale:
            result = scale_bench(args, server)
        else:
            images = root / "jpegs"
            if not (images / "val").is_dir():
                subprocess.run([sys.executable, "bench/jpeg_folder.py", str(images), "--train-per-class",
                                str(args.train_per_class), "--val-per-class", str(args.val_per_class)], check=True, cwd=REPO)
            env = {**os.environ, "PIPELINE_CACHE_DIR": str(root / "user-cache")}
            subprocess.run([sys.executable, "-m", "pipeline", "prepare", "shards", str(images), "--out",
                            f"s3://{BUCKET}/data", "--shard-mb", str(args.shard_mb)], check=True, cwd=REPO, env=env)
            os.environ["PIPELINE_CACHE_DIR"] = str(root / "user-cache")
            from pipeline.data.upload import staging_folder

            result = loader_bench(args, server, staging_folder(f"s3://{BUCKET}/data"))
        print("SUMMARY " + json.dumps(result))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
