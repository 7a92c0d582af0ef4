"""The GPU check's data steps: DALI alone, against synthetic data, on shards, progressive resizing,
the recipes' augmentation on the GPU, torchvision's GPU decode (mixed into bench/gpu_check.py's Check)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from gpu_check_base import REPO, Failed, Skip


class DataSteps:
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
                               check=True, capture_output=True, cwd=REPO, env=self.env())  # env: REPO on the path

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
        # The first H200 run gave 0.891x at the default 0.65: the share of JPEGs decoded on the SMs
        # the training uses is the first suspect, so the hardware decoder's share is swept too.
        loads = [] if self.dry else [0.9, 1.0]
        for load in loads:
            runs[f"dali_hw{load}"] = self.train(f"from_dali_hw{load}", *common, "data.backend=dali",
                                                f"data.dali_hw_decoder_load={load}")
        synthetic = runs["synthetic"]["train/img_per_sec"]
        (self.out / "dali_vs_synthetic.json").write_text(json.dumps(runs, indent=2))
        # data wait on a GPU is host time blocked in DALI's outputs(), which also waits behind the
        # GPU's queue: the img/s ratio is the figure, the wait a hint.
        return (f"JPEG through DALI {runs['dali']['train/img_per_sec']:.0f} img/s vs synthetic {synthetic:.0f}: "
                f"{runs['dali']['train/img_per_sec'] / synthetic:.3f}x at hw_decoder_load 0.65, data wait "
                f"{runs['dali']['train/data_wait']:.3f}, peak {runs['dali']['peak_memory_gib']} GiB; "
                + "".join(f"at {load}: {runs[f'dali_hw{load}']['train/img_per_sec'] / synthetic:.3f}x, wait "
                          f"{runs[f'dali_hw{load}']['train/data_wait']:.3f}; " for load in loads)
                + "(targets on a GPU: >= 0.95x, wait < 0.03)")

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

    def step_dali_s3_shards(self) -> str:
        """Issue 42 on the GPU: dali_shards_and_feed's shards served by a real S3 server started here
        (SeaweedFS, tests/s3_server.py), trained from through `s3://` (node cache, cold: every shard is
        downloaded during the run) against the same shards on local disk, in one run: ResNet-50 img/s
        and data wait through DALI, both with the streaming order (data.shuffle=blocks)."""
        self._need_dali()
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        try:
            import boto3  # noqa: F401

            from tests.s3_server import SeaweedS3, weed_binary
            weed_binary()
        except (ImportError, RuntimeError) as why:
            raise Skip(f"no S3 server or client here ({why}); bench/device_wheels.sh bundles both") from None
        shards = self.work / "shards"
        if not (shards / "train").is_dir():
            raise Skip("no shards from dali_shards_and_feed (run that step first)")
        server = SeaweedS3(self.work / "s3")
        server.start()
        saved = {k: os.environ.get(k) for k in server.env()}
        try:
            os.environ.update(server.env())
            from pipeline.data.upload import upload_tree

            start = time.perf_counter()
            upload_tree(shards, "s3://gpu-check/shards")
            upload_s = time.perf_counter() - start
            steps, batch = (6, 16) if self.dry else (40, 256)
            model = (["model.name=resnet20", "data.image_size=32"] if self.dry else
                     ["model.name=resnet50", "data.image_size=224", "data.scale=[0.08,1.0]"])
            common = [*model, f"data.batch_size={batch}", f"data.workers={self.workers}", "trainer.epochs=1",
                      f"trainer.max_steps={steps}", f"trainer.log_every={max(1, steps // 4)}", "trainer.eval_every=1000",
                      "data.backend=dali", "data.shuffle=blocks", *self.device_overrides]
            runs = {"local": self.train("shards_local", *common, f"data.path={shards}"),
                    "s3": self.train("shards_s3", *common, "data.path=s3://gpu-check/shards",
                                     f"data.cache_dir={self.work / 'cache'}", env=server.env())}
        finally:
            server.kill()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if any(r["data_backend"] != "dali" or r["steps"] != runs["local"]["steps"] or not r["steps"] for r in runs.values()):
            raise Failed(", ".join(f"{n}: {r['data_backend']} {r['steps']} steps" for n, r in runs.items()))
        (self.out / "dali_s3_shards.json").write_text(json.dumps({"upload_s": upload_s, **runs}, indent=2))
        local, s3 = runs["local"], runs["s3"]
        return (f"DALI from s3:// (cold cache) {s3['train/img_per_sec']:.0f} img/s, data wait "
                f"{s3['train/data_wait']:.3f} vs local shards {local['train/img_per_sec']:.0f} img/s, wait "
                f"{local['train/data_wait']:.3f}: {s3['train/img_per_sec'] / local['train/img_per_sec']:.3f}x; "
                f"upload {upload_s:.0f} s")

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

    def step_recipe_augmentation(self) -> str:
        """Issue 33: the recipes' augmentation inside DALI's graph (on the GPU in a GPU run) against the
        same training run without it: img/s and data wait with none, TrivialAugmentWide, and timm's
        RandAugment m7 with random erasing, each choice fed from the sample's seed."""
        self._need_dali()
        steps, batch = (6, 16) if self.dry else (30, 256)
        model = (["model.name=resnet20", "data.image_size=32"] if self.dry else
                 ["model.name=resnet50", "data.image_size=176", "data.scale=[0.08,1.0]"])
        common = [*model, f"data.path={self.jpegs}", f"data.batch_size={batch}", f"data.workers={self.workers}",
                  "trainer.epochs=1", f"trainer.max_steps={steps}", f"trainer.log_every={max(1, steps // 3)}",
                  "data.backend=dali", *self.device_overrides]
        policies = {"none": [], "ta_wide": ["data.auto_augment=ta_wide"],
                    "rand-m7+erase": ["data.auto_augment=rand-m7-mstd0.5-inc1", "data.random_erase=0.25"]}
        if self.dry:  # the twin runs the graph with a policy and erasing once (ta_wide: tests/test_recipe_pieces.py)
            del policies["ta_wide"]
        runs = {name: self.train(f"augment_{i}", *common, *extra) for i, (name, extra) in enumerate(policies.items())}
        if any(r["data_backend"] != "dali" or r["steps"] != runs["none"]["steps"] or not r["steps"] for r in runs.values()):
            raise Failed(", ".join(f"{n}: {r['data_backend']} {r['steps']} steps" for n, r in runs.items()))
        (self.out / "recipe_augmentation.json").write_text(json.dumps(runs, indent=2))
        base = runs["none"]["train/img_per_sec"]
        return "; ".join(f"{name} {r['train/img_per_sec']:.0f} img/s (x{r['train/img_per_sec'] / base:.2f}), "
                         f"data wait {r['train/data_wait']:.3f}" for name, r in runs.items())

    def step_eval_parity(self) -> str:
        """The checkpoint dali_vs_synthetic trained on the JPEGs, evaluated through DALI's val graph and
        through torchvision's transforms on the same val images (`pipeline eval-parity`)."""
        self._need_dali()
        run = self.work / "from_dali"
        if not (run / "checkpoints").exists():
            raise Skip("no checkpoint from dali_vs_synthetic (run that step first)")
        # the view dali_vs_synthetic trained at
        model = ["model.name=resnet20", "data.image_size=32"] if self.dry else ["model.name=resnet50", "data.image_size=224"]
        proc = self.cli("eval-parity", *model, f"data.path={self.jpegs}", f"trainer.run_dir={run}",
                        f"data.workers={self.workers}", *self.device_overrides, "--max-gap", "0.1", expect_ok=False)
        if proc.returncode not in (0, 1):
            raise Failed(f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        (self.out / "eval_parity.json").write_text(json.dumps(r, indent=2))
        figure = (f"view: data.val_view=torchvision (whole image, resize, center crop: the default); {r['images']} val images: top-1 DALI {r['dali/top1']:.2f}% vs torchvision {r['torchvision/top1']:.2f}% "
                  f"(gap {r['top1_gap']:+.2f}), same top-1 class on {r['argmax_agreement']:.1f}%, logits differ by at "
                  f"most {r['max_abs_logit_diff']:.3g} (mean {r['mean_abs_logit_diff']:.3g})")
        if not r["passed"]:
            raise Failed(figure + ": more than 0.1 points and one image apart")
        return figure

    def step_torchvision_gpu_decode(self) -> str:
        if self.dry:
            raise Skip("decode_jpeg(device='cuda') needs a GPU")
        proc = self.cli(script=str(REPO / "bench" / "gpu_decode.py"))
        return proc.stdout.strip().splitlines()[-1]
