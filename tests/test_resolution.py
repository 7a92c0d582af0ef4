"""Image sizes (issue 28): progressive resizing in both backends, validation at its own size and
view, flip TTA in evaluation, BlurPool's strict loading."""
import pytest
import torch
import torchvision
from PIL import Image

from pipeline.config import ConfigError, load_config
from pipeline.data import Placement, build_data
from pipeline.data.resolution import train_sizes, val_size
from pipeline.world import WorldInfo
from pipeline.models import build_model
from pipeline.models.blurpool import BlurConv2d
from pipeline.runtime import make_runtime
from pipeline.training.evaluate import evaluate
from tests.test_data import _assert_same_images

CPU = Placement(torch.device("cpu"), channels_last=True)
# Sizes 24, 32, 40 over three epochs: a ramp from epoch 0 to 2 in steps of 8 (demo images are 48 px).
RAMP = ["data.image_size_start=24", "data.image_size=40", "data.size_ramp=[0,2]", "data.size_step=8"]


def _cfg(root, *overrides):
    return load_config(None, [f"data.path={root}", "data.batch_size=16", "data.workers=1", *RAMP, *overrides])


def test_schedule_rounds_to_the_step():
    cfg = load_config(None, RAMP)
    assert train_sizes(cfg.data, 4) == [24, 32, 40, 40]
    cfg = load_config(None, ["data.image_size_start=160", "data.image_size=192", "data.size_ramp=[65,76]"])
    sizes = train_sizes(cfg.data, 88)
    assert sizes.count(160) == 71 and sizes.count(192) == 17 and sizes[70:72] == [160, 192]
    assert train_sizes(load_config(None, ["data.image_size=64"]).data, 3) == [64, 64, 64]  # no schedule


@pytest.mark.parametrize("overrides, message", [
    (["data.image_size_start=24", "data.image_size=40", "data.size_ramp=[3,3]"], "data.size_ramp"),
    (["data.image_size_start=20", "data.image_size=40", "data.size_ramp=[0,2]", "data.size_step=8"], "multiples"),
    (["data.image_size_start=24", "data.dataset=cifar10", "data.size_ramp=[0,2]"], "cifar10"),
    (["data.val_crop_mode=border"], "data.val_crop_mode"),
])
def test_bad_size_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("backend, resize", [("torchvision", "auto"), ("dali", "auto"), ("dali", "dali")])
def test_backends_follow_the_schedule(demo_data, backend, resize):
    """dali_resize=dali is the GPU graph's CPU twin: DALI itself resizes to the pass's size."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    data = build_data(_cfg(demo_data, f"data.backend={backend}", "data.val_image_size=44",
                           f"data.dali_resize={resize}").data, CPU, seed=0)
    for epoch, size in enumerate([24, 32, 40]):
        data.train.set_epoch(epoch, start_step=23)  # the last two batches of the epoch
        shapes = [tuple(images.shape) for images, _ in data.train]
        assert shapes == [(16, 3, size, size)] * 2
    data.val.set_epoch(0)
    assert next(iter(data.val))[0].shape == (16, 3, 44, 44)
    if backend == "dali":  # one pipeline per pass, whatever the size: never one per batch
        assert (data.train.pipelines_built, data.val.pipelines_built) == (3, 1)  # each size its own


def test_dali_and_torchvision_agree_at_a_scheduled_size(demo_data):
    pytest.importorskip("nvidia.dali")
    batches = {}
    for backend in ("torchvision", "dali"):
        data = build_data(_cfg(demo_data, f"data.backend={backend}").data, CPU, seed=0)
        data.train.set_epoch(1, start_step=2)  # 32 px
        batches[backend] = next(iter(data.train))
    assert batches["dali"][0].shape[-1] == 32
    _assert_same_images(batches["torchvision"], batches["dali"])


@pytest.fixture(scope="module")
def wide_images(tmp_path_factory):
    """Non-square images (64 x 32, a horizontal gradient), where the center and squash views differ."""
    root = tmp_path_factory.mktemp("wide")
    ramp = torch.linspace(0, 255, 64).to(torch.uint8).view(1, 64, 1).expand(32, 64, 3).numpy()
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(ramp[:, ::-1] if label == "b" else ramp).save(root / split / label / f"{i}.jpg",
                                                                               quality=95)
    return root


@pytest.mark.parametrize("mode", ["center", "squash"])
def test_validation_view_at_its_own_size(wide_images, mode):
    batches = {}
    backends = ["torchvision"] + (["dali"] if _has_dali() else [])
    for backend in backends:
        cfg = load_config(None, [f"data.path={wide_images}", "data.batch_size=4", "data.workers=1", "data.image_size=16",
                                 "data.val_image_size=24", "data.crop_fraction=0.75", f"data.val_crop_mode={mode}", f"data.backend={backend}"])
        data = build_data(cfg.data, CPU, seed=0)
        data.val.set_epoch(0)
        batches[backend] = next(iter(data.val))
        assert batches[backend][0].shape == (4, 3, 24, 24)
    image = batches["torchvision"][0][0, 0]
    # The view keeps 24/32 of the resized side: center the middle 24 of 64 columns (shorter side 32
    # to 32), squash 48 of 64 (64 x 32 squashed to 32 x 32). 4 levels per column, std 58 levels.
    spread = float(image[:, -1].mean() - image[:, 0].mean())
    assert spread == pytest.approx(23 * 4 / 58.4, abs=0.25) if mode == "center" else \
        spread == pytest.approx(47 * 4 / 58.4, abs=0.4)
    if "dali" in batches:  # the same view (32 - 24 is even, so torchvision's CenterCrop rounds no
        # offset); on this steep gradient resize rounding shows as about one level (0.017)
        assert batches["torchvision"][1].tolist() == batches["dali"][1].tolist()
        assert float((batches["torchvision"][0] - batches["dali"][0]).abs().mean()) < 0.03


def _has_dali():
    import importlib.util

    return importlib.util.find_spec("nvidia.dali") is not None


def test_synthetic_data_follows_the_schedule():
    cfg = load_config(None, ["data.dataset=synthetic", "data.batch_size=4", "data.val_image_size=48", *RAMP])
    data = build_data(cfg.data, CPU, seed=0, num_classes=10)
    sizes = []
    for epoch in range(3):
        data.train.set_epoch(epoch)
        sizes.append(next(iter(data.train))[0].shape[-1])
    data.val.set_epoch(0)
    assert sizes == [24, 32, 40] and next(iter(data.val))[0].shape[-1] == 48


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch, start_step=0):
        pass

    def __iter__(self):
        return iter(self.batches)


def test_flip_tta_averages_the_mirror_logits():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    model(images)
    rt = make_runtime(load_config(None, ["trainer.device=cpu", "trainer.precision=fp32"]).trainer, WorldInfo())
    plain = evaluate(model, _Batches([(images, labels)]), rt)
    flipped = evaluate(model, _Batches([(images, labels)]), rt, flip=True)
    with torch.no_grad():
        logits = (model(images) + model(images.flip(3))) / 2
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert flipped["val/loss"] == pytest.approx(expected, rel=1e-6)
    assert flipped["val/top1"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    assert flipped["val/loss"] != pytest.approx(plain["val/loss"])  # not mirror-symmetric: TTA changes the loss


@pytest.mark.parametrize("name, blurred", [("resnet50", 6), ("resnet18", 6)])
def test_blurpool_keeps_torchvision_strict_loading(name, blurred):
    cfg = load_config(None, [f"model.name={name}", "model.blurpool=true"])
    model = build_model(cfg.model, 1000)
    assert sum(isinstance(m, BlurConv2d) for m in model.modules()) == blurred  # not the 3-channel stem
    reference = getattr(torchvision.models, name)()
    assert set(model.state_dict()) == set(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)  # torchvision -> blurred
    reference.load_state_dict(model.state_dict(), strict=True)  # and back
    model.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(model(x), reference(x), atol=1e-3)  # the blur is in the forward pass
    conv = next(m for m in model.modules() if isinstance(m, BlurConv2d))
    flat = torch.full((1, conv.in_channels, 9, 9), 3.0)
    assert torch.allclose(conv.blur(flat), flat)  # a low-pass filter of unit gain, reflected at the borders


@pytest.mark.parametrize("mode", ["center", "squash"])
def test_val_view_geometry_is_torchvisions_resize_then_center_crop(mode):
    """data.val_view=torchvision: the sizes and corner the DALI source computes from a header are
    the ones torchvision's own Resize and CenterCrop produce, odd differences (round half to even) included."""
    from torchvision.transforms import v2

    from pipeline.data.resolution import val_resize_shorter, val_view_geometry

    cfg = load_config(None, [f"data.val_crop_mode={mode}", "data.image_size=224"]).data
    size, resized = val_size(cfg), val_resize_shorter(cfg)
    for width, height in [(500, 375), (375, 500), (333, 500), (501, 377), (640, 427), (257, 256), (256, 999)]:
        image = torch.arange(width * height, dtype=torch.float64).view(1, height, width)
        tv = v2.functional.resize(image, resized if mode == "center" else [resized, resized],
                                  interpolation=v2.InterpolationMode.NEAREST)
        new_w, new_h, left, top = val_view_geometry(cfg, width, height)
        assert (tv.shape[2], tv.shape[1]) == (new_w, new_h), (width, height)
        assert torch.equal(v2.functional.center_crop(tv, size), tv[:, top:top + size, left:left + size]), (width, height)
