"""TorchEngine's fp16 path on CPU: the CPU twin of a GPU's fp16 autocast + GradScaler."""
import torch
from torch import nn

from pipeline.world import WorldInfo
from pipeline.engines import compile_mode_for
from pipeline.engines.pytorch import TorchEngine
from pipeline.runtime import Runtime


def test_fp16_gradscaler_counts_exactly_the_skipped_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    rt = Runtime(torch.device("cpu"), WorldInfo(), "fp16", "single", False, "fp16: test")
    engine = TorchEngine(model, model, torch.optim.SGD(model.parameters(), lr=0.1), rt, grad_clip=0.0)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    ce = nn.functional.cross_entropy
    for _ in range(4):
        loss = engine.micro_step(images, labels, ce, last_micro=True, accumulation=1)
        assert torch.isfinite(loss)
    with engine.autocast():
        assert model(images).dtype == torch.float16  # autocast really runs the convolutions in fp16
    before = int(engine.skipped_steps)  # the first steps may overflow at the initial scale 2**16
    weights = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):  # a NaN loss: the scaler must skip the step and leave the weights alone
        engine.micro_step(images, labels, lambda out, y: ce(out, y) * float("nan"), last_micro=True, accumulation=1)
    assert int(engine.skipped_steps) == before + 2
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert engine.scaler.get_scale() < 2.0**16


def test_cpu_compiles_without_cuda_graph_modes():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert compile_mode_for("reduce-overhead", cpu) == "default"
    assert compile_mode_for("max-autotune", cpu) == "max-autotune-no-cudagraphs"
    assert compile_mode_for("reduce-overhead", gpu) == "reduce-overhead"  # CUDA graphs on a GPU
    assert compile_mode_for("default", cpu) == "default"


def test_compile_auto_compiles_on_a_gpu_only_and_the_imagenet_configs_use_it():
    """trainer.compile=auto: compiled on a GPU (1.40x eager for ResNet-50 on an H200, docs/benchmarks.md),
    eager on CPU; true and false mean what they say on both, and a YAML bool is accepted."""
    from pipeline.config import load_config
    from pipeline.engines.parallelize import compiles

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    for value, on_cpu, on_gpu in (("auto", False, True), ("true", True, True), ("false", False, False)):
        cfg = load_config(None, [f"trainer.compile={value}"])
        assert (compiles(cfg, cpu), compiles(cfg, gpu)) == (on_cpu, on_gpu), value
    assert load_config(None, []).trainer.compile == "false"  # the default stays eager
    for recipe in ("resnet50", "resnet50_tv2", "resnet50_rsb_a2"):
        assert load_config(f"configs/imagenet/{recipe}.yaml", []).trainer.compile == "auto", recipe
