"""The GPU check: every GPU path of the project run once, each step PASS / FAIL / SKIPPED with its figure.

    python3 bench/gpu_check.py --out OUT          # on a GPU machine (bench/gpu_check.sh installs bundles first)
    GPU_CHECK_DRY=1 python3 bench/gpu_check.py    # the same steps' CPU twins, small (tests run this)

Each step runs the real CLI (`pipeline train / eval / bench`) in a subprocess, keeps its whole output
in OUT/<step>.txt, checks what the step exists to prove (loss finite and falling, resumed == straight,
graphed == eager...) and records one figure line. A failing step never stops the others. At the end
one table is printed and written with every figure to OUT/summary.json; the exit code is 1 when any
step failed. A step whose requirement is absent (no DALI, no DeepSpeed, a GPU-only feature in the dry
run) is SKIPPED with the reason; on a GPU machine the check is complete only when nothing is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Skip(Exception):
    """The step cannot run here; the message says why."""


class Failed(Exception):
    """The step ran and what it checks does not hold."""


@dataclass
class Check:
    out: Path
    dry: bool
    work: Path
    jpegs: Path | None = None
    fail_step: str = ""  # rehearsal: this step's runs get an injected training fault
    current: str = ""
    results: list[dict] = field(default_factory=list)

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out / f"{self.current}.txt"  # each step's raw output, under the step's name

    def cli(self, *args: str, env: dict | None = None, expect_ok: bool = True,
            script: str = "") -> subprocess.CompletedProcess:
        """Run `python -m pipeline ARGS` (or `python SCRIPT ARGS`); output appended to the step's log."""
        proc = subprocess.run([sys.executable, *([script] if script else ["-m", "pipeline"]), *args],
                              capture_output=True, text=True, env=self.env(env), cwd=REPO, timeout=900)
        with open(self.log_path, "a") as log:
            log.write(f"$ {script or 'pipeline'} {' '.join(args)}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}]\n")
        if expect_ok and proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise Failed(f"exit {proc.returncode}: {tail[:300]}")
        return proc

    def env(self, extra: dict | None = None) -> dict:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
        if self.current == self.fail_step:
            env["PIPELINE_FAULT_RAISE_AT_STEP"] = "0"  # pipeline/faults.py: raise before the first step
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
        return env

    def train(self, run: str, *overrides: str, env: dict | None = None) -> dict:
        run_dir = self.work / run
        self.cli("train", *overrides, f"trainer.run_dir={run_dir}", "logging.progress=lines",
                 "logging.wandb.mode=disabled", env=env)
        return json.loads((run_dir / "summary.json").read_text())

    def kill_at_step(self, run: str, step: int, *overrides: str) -> None:
        """Start a training run that stalls once `step` steps are done (fault hook), then SIGKILL it: a
        real kill -9 at a known step, whatever the machine's speed."""
        run_dir = self.work / run
        args = [sys.executable, "-m", "pipeline", "train", *overrides, f"trainer.run_dir={run_dir}",
                "logging.progress=lines", "logging.wandb.mode=disabled"]
        with open(self.log_path, "a") as log:
            log.write(f"$ pipeline train {' '.join(args[4:])}  (SIGKILL before step {step})\n")
            log.flush()
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                    env=self.env({"PIPELINE_FAULT_STALL_AT_STEP": str(step)}))
            deadline = time.time() + 600
            metrics = run_dir / "metrics.jsonl"
            while time.time() < deadline and proc.poll() is None:
                rows = metrics.read_text().splitlines() if metrics.exists() else []
                if any(f'"step": {step},' in r for r in rows):  # text match: a row may be half-written
                    time.sleep(1.0)  # the loop is now asleep in the stall hook before `step`
                    break
                time.sleep(0.2)
            if proc.poll() is not None:
                raise Failed(f"the run to be killed ended by itself (exit {proc.returncode})")
            proc.kill()
            proc.wait()
            log.write(f"[killed with SIGKILL, exit {proc.returncode}]\n")

    def losses(self, run: str) -> list[float]:
        rows = [json.loads(line) for line in (self.work / run / "metrics.jsonl").read_text().splitlines()]
        return [r["train/loss"] for r in rows if "train/loss" in r]

    @property
    def device_overrides(self) -> list[str]:
        return ["trainer.device=cpu"] if self.dry else ["trainer.device=cuda"]

    def small_model(self, steps: int, dry_batch: int = 16) -> list[str]:
        """A quick synthetic job: ResNet-18 at 224 px, batch 64 on a GPU; ResNet-20 at 32 px on CPU."""
        if self.dry:
            return ["model.name=resnet20", "data.image_size=32", f"data.batch_size={dry_batch}",
                    "data.dataset=synthetic", f"data.synthetic_samples={dry_batch * steps}", "trainer.epochs=1",
                    *self.device_overrides]
        return ["model.name=resnet18", "data.image_size=224", "data.batch_size=64", "data.dataset=synthetic",
                f"data.synthetic_samples={64 * steps}", "trainer.epochs=1", "model.num_classes=1000",
                *self.device_overrides]

    # -- steps -----------------------------------------------------------------------------------
    def step_environment(self) -> str:
        import torch

        facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
        elif not self.dry:
            raise Failed("no CUDA GPU visible (use GPU_CHECK_DRY=1 for the CPU twin)")
        for module in ("nvidia.dali", "deepspeed", "torchvision", "timm"):
            try:
                facts[module] = __import__(module, fromlist=["__version__"]).__version__
            except ImportError:
                facts[module] = None
        (self.out / "environment.json").write_text(json.dumps(facts, indent=2))
        return ", ".join(f"{k} {v}" for k, v in facts.items() if v)

    def step_bench_train(self) -> str:
        args = (["--model", "resnet20", "--batch", "8", "--image-size", "32", "--steps", "2", "--repeats", "1",
                 "--device", "cpu"] if self.dry else
                ["--model", "resnet50", "--batch", "256", "--steps", "30", "--repeats", "3"])
        proc = self.cli("bench", "train", *args)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        default = next(r for r in result["rows"] if r["loop"] == "trainer")
        return (f"{result['model']} trainer at defaults {default['img_per_sec']:.0f} img/s, "
                f"{result['default_vs_fastest_bare']:.3f}x the fastest bare loop ({result['numerics_reason']})")

    def step_bench_train_compiled(self) -> str:
        if self.dry:
            raise Skip("torch.compile of ResNet-50 takes minutes on CPU; tests/test_train.py compiles on CPU")
        proc = self.cli("bench", "train", "--model", "resnet50", "--batch", "256",
                        "--steps", "30", "--repeats", "3", "--skip-fp32", "--compile")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        compiled = next(r for r in result["rows"] if r["loop"] == "trainer" and r["compile"])
        return f"resnet50 compiled trainer {compiled['img_per_sec']:.0f} img/s (target >= 6,000 on an H100)"

    def step_cuda_graphs_match_eager(self) -> str:
        if self.dry:
            raise Skip("CUDA graphs need a GPU; tests/test_train.py checks compiled == eager on CPU")
        common = [*self.small_model(20), "trainer.precision=fp32", "trainer.max_steps=20", "trainer.log_every=1"]
        self.train("graphs_eager", *common)
        self.train("graphs_on", *common, "trainer.compile=true", "trainer.compile_mode=reduce-overhead")
        eager, graphed = self.losses("graphs_eager"), self.losses("graphs_on")
        worst = max(abs(g - e) / abs(e) for e, g in zip(eager, graphed))
        if len(eager) != 20 or len(graphed) != 20 or worst > 1e-3:
            raise Failed(f"{len(eager)} eager / {len(graphed)} graphed steps, largest relative difference {worst:.2e}")
        return f"20 fp32 steps graphed vs eager: largest relative loss difference {worst:.2e} (limit 1e-3)"

    def step_fp16_gradscaler(self) -> str:
        # CPU twin: no CPU here has fp16 convolution kernels. Their backward pass is oneDNN's slow
        # path: ResNet-20 at 32 px ran 13 img/s on AVX-512 EPYC and 1 img/s on the AMX Xeon (99% in
        # convolution_backward), so the twin is 8 steps of batch 4 at 16 px, enough to see the loss
        # fall through the GradScaler (28 s -> 3 s on the AMX Xeon).
        steps = 8 if self.dry else 300
        dry_size = ["data.image_size=16"] if self.dry else []
        summary = self.train("fp16", *self.small_model(steps, dry_batch=4), *dry_size, "trainer.precision=fp16",
                             f"trainer.max_steps={steps}", f"trainer.log_every={2 if self.dry else 50}",
                             "optim.lr=0.4", "trainer.channels_last=true")
        losses = self.losses("fp16")
        if summary["precision"] != "fp16" or not all(loss == loss and abs(loss) != float("inf") for loss in losses):
            raise Failed(f"precision {summary['precision']}, losses {losses}")
        if not losses[-1] < losses[0]:
            raise Failed(f"loss did not fall: first window {losses[0]:.4f}, last {losses[-1]:.4f}")
        return (f"{steps} fp16 steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                f"GradScaler skipped {summary['fp16_skipped_steps']} steps")

    def step_syncbn_one_process_nccl(self) -> str:
        if self.dry:
            raise Skip("SyncBatchNorm runs only on GPUs (NCCL)")
        common = [*self.small_model(10), "trainer.precision=fp32", "trainer.max_steps=10", "trainer.log_every=1"]
        self.train("plain_bn", *common, "trainer.engine=single")
        summary = self.train("sync_bn", *common, "trainer.engine=ddp", "distributed.sync_bn=true")
        plain, synced = self.losses("plain_bn"), self.losses("sync_bn")
        worst = max(abs(s - p) / abs(p) for p, s in zip(plain, synced))
        if summary["engine"] != "ddp" or len(plain) != len(synced) or worst > 1e-3:
            raise Failed(f"engine {summary['engine']}, largest relative loss difference {worst:.2e}")
        return f"DDP + SyncBN in a one-process NCCL group vs plain BN: largest relative loss difference {worst:.2e}"

    def _deepspeed(self, stage: int) -> str:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise Skip("DeepSpeed not importable (bench/device_wheels.sh bundles it)") from None
        run = f"zero{stage}"
        common = [*self.small_model(10), "trainer.engine=deepspeed", f"distributed.zero_stage={stage}",
                  "trainer.log_every=1", "trainer.checkpoint_every=5", "trainer.eval_every=1000"]
        self.train(f"{run}_straight", *common, "trainer.max_steps=10")
        try:
            self.train(run, *common, "trainer.max_steps=10", env={"PIPELINE_FAULT_RAISE_AT_STEP": "7"})
        except Failed:
            pass  # the injected crash
        summary = self.train(run, *common, "trainer.max_steps=10")
        log = self.log_path.read_text()
        if "resumed from" not in log or summary["steps"] != 10:
            raise Failed(f"no resume from the step-5 checkpoint (steps {summary['steps']})")
        straight, resumed = self.losses(f"{run}_straight"), self.losses(run)
        worst = max(abs(r - s) / abs(s) for s, r in zip(straight, resumed))
        if len(resumed) != 10 or worst > self.resume_tolerance:
            raise Failed(f"resumed losses differ from the straight run's by up to {worst:.2e}")
        return f"ZeRO-{stage}: 10 steps, crash at 7, resumed from step 5; losses vs straight run within {worst:.1e}"

    def step_deepspeed_zero1(self) -> str:
        if self.dry:  # the same _deepspeed code as ZeRO-2's twin, which runs; three DeepSpeed launches saved
            raise Skip("ZeRO-1 runs ZeRO-2's twin code at stage 1; on CPU tests/test_elastic.py and "
                       "tests/test_distributed.py train, crash and resume under ZeRO-1")
        return self._deepspeed(1)

    def step_deepspeed_zero2(self) -> str:
        return self._deepspeed(2)

    @property
    def resume_tolerance(self) -> float:
        # CPU runs are bit-exact. cuDNN picks nondeterministic backward kernels (atomics), so on a GPU
        # the resumed steps match the straight run's to rounding that grows a little per step.
        return 0.0 if self.dry else 2e-2

    def step_checkpoint_kill_resume_eval(self) -> str:
        common = [*self.small_model(20), "trainer.log_every=1", "trainer.checkpoint_every=10", "trainer.max_steps=20"]
        straight = self.train("straight", *common)
        self.kill_at_step("killed", 15, *common)
        resumed = self.train("killed", *common)
        a, b = self.losses("straight"), self.losses("killed")
        worst = max(abs(y - x) / abs(x) for x, y in zip(a, b))
        if len(a) != 20 or len(b) != 20 or worst > self.resume_tolerance:
            raise Failed(f"{len(a)} straight / {len(b)} resumed losses, largest relative difference {worst:.2e}")
        proc = self.cli("eval", *common, f"trainer.run_dir={self.work / 'killed'}")
        evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
        if abs(evaluated["val/top1"] - resumed["final/val/top1"]) > 1e-6:
            raise Failed(f"pipeline eval top-1 {evaluated['val/top1']} != the run's {resumed['final/val/top1']}")
        return (f"kill -9 at step 15, resumed from step 10: losses within {worst:.1e} of the straight run "
                f"(limit {self.resume_tolerance:g}); pipeline eval top-1 {evaluated['val/top1']:.2f} = the run's; "
                f"straight run {straight['train/img_per_sec']:.0f} img/s")

    def _need_dali(self) -> None:
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise Skip("DALI not importable (bench/device_wheels.sh bundles it)") from None
        if self.jpegs is None:
            self.jpegs = self.work / "jpegs"
            if self.dry:
                from pipeline.data.demo import make_demo_data

                make_demo_data(self.jpegs, train_per_class=8, val_per_class=4, size=96)
            else:  # 800 rendered JPEGs (~30 s), each train image under 20 names: 12,000 train files
                subprocess.run([sys.executable, str(REPO / "bench" / "jpeg_folder.py"), str(self.jpegs),
                                "--train-per-class", "60", "--val-per-class", "20", "--links", "20"],
                               check=True, capture_output=True, cwd=REPO)

    @property
    def workers(self) -> int:
        return 2 if self.dry else max(1, (os.cpu_count() or 3) - 2)

    def step_dali_pipeline_alone(self) -> str:
        self._need_dali()
        device = "cpu" if self.dry else "cuda"
        batch = "16" if self.dry else "256"
        proc = self.cli("bench", "data", str(self.jpegs), "--device", device, "--batch", batch,
                        "--workers", str(self.workers), "--repeats", "1" if self.dry else "3", "--backends", "dali",
                        *(["--image-size", "64"] if self.dry else []))
        rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
        rates = {r["split"]: r["img_per_sec"] for r in rows}
        return f"DALI {device} pipeline alone: train {rates['train']:.0f} img/s, val {rates['val']:.0f} img/s"

    def step_dali_vs_synthetic(self) -> str:
        self._need_dali()
        steps = 6 if self.dry else 40
        batch = 16 if self.dry else 256
        model = (["model.name=resnet20", "data.image_size=32"] if self.dry else
                 ["model.name=resnet50", "data.image_size=224", "data.scale=[0.08,1.0]"])
        common = [*model, f"data.path={self.jpegs}", f"data.batch_size={batch}", f"data.workers={self.workers}",
                  "trainer.epochs=1", f"trainer.max_steps={steps}", f"trainer.log_every={max(1, steps // 4)}",
                  "trainer.eval_every=1000", f"data.synthetic_samples={batch * steps}", *self.device_overrides]
        runs = {backend: self.train(f"from_{backend}", *common, f"data.backend={backend}")
                for backend in ("dali", "synthetic")}
        if runs["dali"]["data_backend"] != "dali":
            raise Failed(f"ran with {runs['dali']['data_backend']}, not DALI")
        ratio = runs["dali"]["train/img_per_sec"] / runs["synthetic"]["train/img_per_sec"]
        (self.out / "dali_vs_synthetic.json").write_text(json.dumps(runs, indent=2))
        return (f"JPEG through DALI {runs['dali']['train/img_per_sec']:.0f} img/s vs synthetic "
                f"{runs['synthetic']['train/img_per_sec']:.0f}: {ratio:.3f}x, data wait "
                f"{runs['dali']['train/data_wait']:.3f}, peak {runs['dali']['peak_memory_gib']} GiB "
                "(targets on a GPU: >= 0.95x, wait < 0.03)")

    def step_dali_shards_and_feed(self) -> str:
        """The same JPEGs as WebDataset shards through DALI's decoder (mixed on a GPU), against the
        folder in the same run, and the DALI feed at 0 (in process), 2 and 4 parallel workers."""
        self._need_dali()
        shards = self.work / "shards"
        self.cli("prepare", "shards", str(self.jpegs), "--out", str(shards), "--workers", str(self.workers),
                 "--shard-mb", "8" if self.dry else "256")
        device = "cpu" if self.dry else "cuda"
        proc = self.cli("bench", "data", str(self.jpegs), "--shards", str(shards), "--device", device,
                        "--batch", "16" if self.dry else "256", "--workers", str(self.workers),
                        "--repeats", "1" if self.dry else "3", "--backends", "dali",
                        *(["--image-size", "64"] if self.dry else []))
        rates = {(r["split"], r["backend"]): r["img_per_sec"] for r in json.loads(proc.stdout.strip().splitlines()[-1])["rows"]}
        feed = self.cli(str(shards), "--batch", "16" if self.dry else "256", "--passes", "1" if self.dry else "3",
                        "--workers", "0,2" if self.dry else "0,2,4", script=str(REPO / "bench" / "dali_feed_rate.py"))
        feed_rates = [line.split(": ")[1].split(" img/s")[0] + " img/s (" + line.split("DALI source, ")[1].split(":")[0] + ")"
                      for line in feed.stdout.splitlines() if line.startswith("DALI source")]
        return (f"DALI {device} train: folder {rates[('train', 'dali')]:.0f} img/s, shards "
                f"{rates[('train', 'dali/shards')]:.0f}; val: folder {rates[('val', 'dali')]:.0f}, shards "
                f"{rates[('val', 'dali/shards')]:.0f}; feed on shards: " + ", ".join(feed_rates))

    def step_progressive_resizing(self) -> str:
        """Issue 28: training img/s at 160/192/224 px (ResNet-50 and -18, bf16 channels_last) as
        ratios in one run, and a short 2-epoch run whose train size changes 160 -> 192 px through
        DALI's mixed decoder, validating at 256 with flip TTA."""
        self._need_dali()
        rate_args = (["--models", "resnet18", "--sizes", "32,48", "--batch", "4", "--steps", "1", "--repeats", "1"]
                     if self.dry else ["--batch", "256", "--steps", "10", "--repeats", "3", "--device", "cuda"])
        proc = self.cli("--precision", "bf16", "--channels-last", *rate_args, script=str(REPO / "bench" / "size_rate.py"))
        rates = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
        start, end, val = (24, 32, 40) if self.dry else (160, 192, 256)
        model = (["model.name=resnet20", "data.batch_size=16"] if self.dry else
                 ["model.name=resnet50", "data.batch_size=256", "data.scale=[0.08,1.0]"])
        summary = self.train("progressive", *model, f"data.path={self.jpegs}", f"data.workers={self.workers}",
                             "trainer.epochs=2", f"data.image_size_start={start}", f"data.image_size={end}",
                             "data.size_ramp=[0,1]", f"data.size_step={8 if self.dry else 32}", f"data.val_image_size={val}", "trainer.tta_flip=true", "model.blurpool=true",
                             "optim.schedule=triangular", "data.backend=dali", *self.device_overrides)
        log = self.log_path.read_text()
        seen = [f"train image size {size} px" in log for size in (start, end)]
        if not all(seen) or summary["data_backend"] != "dali" or summary["final/val/top1"] is None:
            raise Failed(f"sizes seen {seen}, backend {summary['data_backend']}, val {summary['final/val/top1']}")
        ratios = "; ".join(f"{m} " + ", ".join(f"{s} px {r['img_per_sec']:.0f} img/s (x{r['ratio_to_largest']:.2f}, "
                                               f"pixel rule x{r['pixel_rule']:.2f})" for s, r in by.items())
                           for m, by in rates.items())
        return f"{ratios}; DALI run {start} -> {end} px, val {val} + TTA: {summary['train/img_per_sec']:.0f} img/s"

    def step_torchvision_gpu_decode(self) -> str:
        if self.dry:
            raise Skip("decode_jpeg(device='cuda') needs a GPU")
        proc = self.cli(script=str(REPO / "bench" / "gpu_decode.py"))
        return proc.stdout.strip().splitlines()[-1]

    STEPS = ("environment", "bench_train", "bench_train_compiled", "cuda_graphs_match_eager", "fp16_gradscaler",
             "syncbn_one_process_nccl", "deepspeed_zero1", "deepspeed_zero2", "checkpoint_kill_resume_eval",
             "dali_pipeline_alone", "dali_vs_synthetic", "dali_shards_and_feed", "progressive_resizing",
             "torchvision_gpu_decode")

    def run(self, only: list[str]) -> int:
        for name in self.STEPS:
            if only and name not in only:
                continue
            start = time.perf_counter()
            self.current = name
            try:
                status, figure = "PASS", getattr(self, f"step_{name}")()
            except Skip as why:
                status, figure = "SKIPPED", str(why)
            except Failed as why:
                status, figure = "FAIL", str(why)
            except Exception as exc:  # noqa: BLE001 - a broken step is a failed step, the others still run
                status, figure = "FAIL", f"{type(exc).__name__}: {exc}"[:300]
            seconds = round(time.perf_counter() - start, 1)
            self.results.append({"step": name, "status": status, "seconds": seconds, "figure": figure})
            print(f"[{status}] {name} ({seconds:.0f} s): {figure}", flush=True)
        return self.report()

    def report(self) -> int:
        width = max(len(r["step"]) for r in self.results)
        lines = [f"{'step':<{width}}  {'status':<7}  {'seconds':>7}  figure"]
        lines += [f"{r['step']:<{width}}  {r['status']:<7}  {r['seconds']:>7.1f}  {r['figure']}" for r in self.results]
        counts = {s: sum(r["status"] == s for r in self.results) for s in ("PASS", "FAIL", "SKIPPED")}
        lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIPPED']} skipped")
        print("\n".join(lines))
        (self.out / "summary.json").write_text(json.dumps(
            {"dry": self.dry, "steps": self.results, **{k.lower(): v for k, v in counts.items()}}, indent=2))
        return 1 if counts["FAIL"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--dry", action="store_true", default=os.environ.get("GPU_CHECK_DRY") == "1",
                        help="run the CPU twins (also GPU_CHECK_DRY=1)")
    parser.add_argument("--only", default="", help="comma-separated step names")
    parser.add_argument("--fail-step", default="", help="rehearse a failure: inject a training fault into this step")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        return Check(out, args.dry, work, fail_step=args.fail_step).run([s for s in args.only.split(",") if s])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
