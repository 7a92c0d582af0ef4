"""The GPU check's training steps: throughput, compile and CUDA graphs, fp16, SyncBN, DeepSpeed,
kill and resume (mixed into bench/gpu_check.py's Check)."""
from __future__ import annotations

import json
import sys

from gpu_check_base import Failed, Skip


class TrainingSteps:
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
        if len(eager) != 20 or len(graphed) != 20:
            raise Failed(f"{len(eager)} eager / {len(graphed)} graphed steps")
        # Step 1 is one forward pass of the same weights on the same batch: only kernel choice can
        # differ. After it, inductor's fused kernels (another reduction order) and cuDNN's
        # nondeterministic backward kernels drift apart by rounding that grows per step. The first
        # H200 run (2026-12-04) drifted to 7.5e-3 near loss 1 and met again at 0.0327 by step 20, so
        # the trajectory gets the GPU's resume tolerance; a stale or wrong graph input is far outside it.
        first = abs(graphed[0] - eager[0]) / abs(eager[0])
        worst = max(abs(g - e) / abs(e) for e, g in zip(eager, graphed))
        if first > 1e-4 or worst > self.resume_tolerance:
            raise Failed(f"step 1 differs by {first:.2e} (limit 1e-4), the 20 steps by up to {worst:.2e} "
                         f"(limit {self.resume_tolerance:g})")
        return (f"20 fp32 steps graphed vs eager: step 1 within {first:.1e} (limit 1e-4), largest relative loss "
                f"difference {worst:.2e} (limit {self.resume_tolerance:g}), final {eager[-1]:.4f} vs {graphed[-1]:.4f}")

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
