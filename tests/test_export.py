"""The trained model leaves the pipeline: export round trips, predict, fine-tuning from weights (issue 18)."""
import argparse
import json
import shutil

import pytest
import torch
import torchvision

from pipeline import checkpoint as ckpt
from pipeline.config import load_config, to_dict
from pipeline.models import build_model
from pipeline.tools import export
from tests.helpers import FAST, run_cli

CLASSES = [f"class_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """A plain checkpoint of ImageNet ResNet-18 (10 classes, 64 px) with an EMA copy that differs."""
    run = tmp_path_factory.mktemp("export") / "run"
    cfg = load_config(None, ["model.name=resnet18", "model.num_classes=10", "data.image_size=64"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 10)
    ema = {f"module.{k}": (v + 0.01 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    ckpt.save_checkpoint({"model": model.state_dict(), "ema": ema, "progress": {"global_step": 7},
                          "config": to_dict(cfg), "classes": CLASSES}, run, 7)
    return run, model


def _export(run, fmt, out, raw=False) -> None:
    assert export.main(argparse.Namespace(checkpoint=str(run), format=fmt, out=str(out), raw=raw)) == 0


def test_safetensors_loads_strictly_into_torchvision_with_identical_outputs(imagenet_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    run, model = imagenet_run
    _export(run, "safetensors", tmp_path / "raw.safetensors", raw=True)
    _export(run, "safetensors", tmp_path / "ema.safetensors")
    reference = torchvision.models.resnet18(num_classes=10).eval()
    reference.load_state_dict(load_file(str(tmp_path / "raw.safetensors")), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(reference(x), model.eval()(x), atol=1e-5)
    ema = load_file(str(tmp_path / "ema.safetensors"))  # the EMA copy by default
    assert torch.equal(ema["conv1.weight"], model.state_dict()["conv1.weight"] + 0.01)
    with safe_open(str(tmp_path / "ema.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["classes"]) == CLASSES and meta["model"] == "resnet18" and meta["weights"] == "ema"
    assert json.loads(meta["config"])["data"]["image_size"] == 64


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_torchscript_and_onnx_match_the_eager_model(imagenet_run, tmp_path, fmt):
    run, model = imagenet_run
    out = tmp_path / f"model.{fmt}"
    _export(run, fmt, out, raw=True)
    x = torch.randn(3, 3, 64, 64)  # another batch size than the export's example
    with torch.no_grad():
        expected = model.eval()(x)
        if fmt == "torchscript":
            got = torch.jit.load(str(out))(x)
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert (got - expected).abs().max() < 1e-4


def test_bad_inputs_end_with_one_line_and_overwrite_nothing(imagenet_run, tmp_path):
    run, _ = imagenet_run
    out = tmp_path / "model.safetensors"
    out.write_text("keep me")
    proc = run_cli("export", str(run), "--format", "tflite", quick=True)
    assert proc.returncode == 2 and "invalid choice: 'tflite'" in proc.stderr
    truncated = tmp_path / "step-000000001.pt"
    truncated.write_bytes((run / "checkpoints" / "step-000000007.pt").read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save([1, 2, 3], foreign)
    for bad, message in ((truncated, "is unreadable or truncated"), (foreign, "is not a pipeline checkpoint"),
                         (tmp_path / "missing", "checkpoint or run directory not found")):
        proc = run_cli("export", str(bad), "--format", "safetensors", "--out", str(out), quick=True)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert out.read_text() == "keep me"


def test_pretrained_of_another_model_is_refused(imagenet_run, tmp_path, demo_data):
    run, _ = imagenet_run
    _export(run, "safetensors", tmp_path / "r18.safetensors")
    proc = run_cli("train", *FAST, f"data.path={demo_data}", f"model.pretrained={tmp_path / 'r18.safetensors'}",
                   f"trainer.run_dir={tmp_path / 'x'}", quick=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: model.pretrained {tmp_path / 'r18.safetensors'} does not fit model resnet20: ")


@pytest.mark.slow
def test_predict_and_fine_tuning_from_an_exported_run(tmp_path, demo_data):
    """Train on the demo data, export, predict (with a bad file), then fine-tune on a relabelled
    5-class subset: from the exported weights it beats training from scratch for the same steps
    (2 epochs of 5 steps)."""
    run = tmp_path / "pre"
    run_cli("train", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.epochs=6", "optim.lr=0.4",
            check=True)
    assert "## Reproduce" in (run / "MODEL_CARD.md").read_text()
    weights = tmp_path / "pre.safetensors"
    run_cli("export", str(run), "--format", "safetensors", "--out", str(weights), check=True)
    shutil.copy(next((demo_data / "val" / "rings").iterdir()), tmp_path / "ring.JPEG")
    (tmp_path / "broken.JPEG").write_bytes(b"not an image")
    proc = run_cli("predict", "--checkpoint", str(run), "--json", "--topk", "3", "--precision", "fp32",
                   str(tmp_path / "ring.JPEG"), str(tmp_path / "broken.JPEG"), check=False)
    assert proc.returncode == 1 and f"cannot read image {tmp_path / 'broken.JPEG'}" in proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["file"].endswith("ring.JPEG") and len(row["top"]) == 3
    # --precision fp32: the same probabilities as the run's model in fp32 on the run's val transform, here.
    from pipeline.data.folder import ValTransform, load_rgb
    from pipeline.data.normalize import PixelNormalizer
    from pipeline.trained import load_trained

    trained = load_trained(run)
    image = PixelNormalizer(trained.cfg.data.mean, trained.cfg.data.std).chw(
        ValTransform(trained.cfg.data)(load_rgb(str(tmp_path / "ring.JPEG")), 0))
    with torch.no_grad():
        probs = trained.model(image[None]).softmax(1)[0]
    best = int(probs.argmax())
    assert row["top"][0] == {"class": trained.classes[best], "index": best, "prob": round(float(probs[best]), 5)}
    # Over the whole val folder, predict counts the same images right as `pipeline eval` of the run:
    # both use the run's numerics (bf16 autocast where `auto` picks it) and its val batches.
    proc = run_cli("predict", "--checkpoint", str(run), "--json", str(demo_data / "val"), check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    right = sum(r["top"][0]["class"] == r["file"].split("/")[-2] for r in rows)
    evaluated = json.loads(run_cli("eval", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}",
                                   check=True).stdout.splitlines()[-1])
    assert len(rows) == evaluated["val/samples"] == 130
    assert right == round(evaluated["val/top1"] * 130 / 100), (right, evaluated)
    summary = json.loads((run / "summary.json").read_text())
    assert round(summary["final/val/top1"] * 130 / 100) == right, summary  # the run's own last validation
    # Relabelled subset: 5 demo classes, permuted labels, through file lists.
    classes = sorted(p.name for p in (demo_data / "train").iterdir())[:5]
    for split, per_class in (("train", 16), ("val", 13)):
        lines = [f"{path} {4 - label}" for label, name in enumerate(classes)
                 for path in sorted((demo_data / split / name).iterdir())[:per_class]]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    common = [*FAST, f"data.train_list={tmp_path / 'train.txt'}", f"data.val_list={tmp_path / 'val.txt'}",
              "trainer.epochs=2", "data.batch_size=16", "optim.lr=0.1", "optim.warmup_epochs=0"]
    tuned = run_cli("train", *common, f"model.pretrained={weights}", f"trainer.run_dir={tmp_path / 'tuned'}", check=True)
    assert "classifier re-initialized (10 classes in" in tuned.stderr and "5 here" in tuned.stderr
    run_cli("train", *common, f"trainer.run_dir={tmp_path / 'scratch'}", check=True)
    top1 = {name: json.loads((tmp_path / name / "summary.json").read_text())["final/val/top1"]
            for name in ("tuned", "scratch")}
    assert top1["tuned"] >= top1["scratch"] + 5, top1  # 65 val images: 5 points is 4 images
