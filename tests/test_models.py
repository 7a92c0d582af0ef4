import pytest
import torch
import torchvision

from pipeline.config import ModelConfig
from pipeline.models import build_model, count_parameters, get_spec, model_names
from pipeline.models.resnet import ACTIVATIONS, SHORTCUTS, BlockOptions, ResNet

TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}
# He 2015 Table 6 and He 2016 (CIFAR-10, 10 classes), in millions as printed in the papers.
PAPER_MILLIONS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
                  "resnet1202": 19.4, "preact_resnet164": 1.7, "preact_resnet1001": 10.2}


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_imagenet_parameter_counts_match_torchvision(name):
    assert count_parameters(build_model(ModelConfig(name=name))) == TORCHVISION_PARAMS[name]


WIDER = ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


@pytest.mark.parametrize("name", WIDER)
def test_resnext_and_wide_resnets_have_torchvisions_parameter_count(name):
    """The count torchvision's published weights state (their metadata, as installed)."""
    published = torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta["num_params"]
    assert count_parameters(build_model(ModelConfig(name=name))) == published


@pytest.mark.parametrize("name", list(PAPER_MILLIONS))
def test_cifar_parameter_counts_match_papers(name):
    n = count_parameters(build_model(ModelConfig(name=name)))
    assert abs(n / 1e6 - PAPER_MILLIONS[name]) / PAPER_MILLIONS[name] < 0.02, n


@pytest.mark.parametrize("name", model_names())
def test_every_registry_model_builds_and_runs(name):
    model = build_model(ModelConfig(name=name)).eval()
    spec = get_spec(name)
    side = 32 if spec.family == "cifar" else 64
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, spec.default_classes)


def test_plain_twins_have_no_shortcut():
    assert count_parameters(build_model(ModelConfig(name="plain20"))) == count_parameters(build_model(ModelConfig(name="resnet20")))
    block = build_model(ModelConfig(name="plain34")).layer2[0]
    assert block.downsample is None


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_weights_load_strictly_with_identical_outputs(name):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(num_classes=1000).eval()
    ours = build_model(ModelConfig(name=name)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_v1_moves_the_stride_to_the_first_1x1():
    v1 = build_model(ModelConfig(name="resnet50", variant="v1")).layer2[0]
    v15 = build_model(ModelConfig(name="resnet50")).layer2[0]
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))


def test_projection_options():
    a = build_model(ModelConfig(name="resnet34", projection="A"))
    c = build_model(ModelConfig(name="resnet34", projection="C"))
    b = build_model(ModelConfig(name="resnet34"))
    assert count_parameters(a) < count_parameters(b) < count_parameters(c)
    x = torch.randn(2, 3, 64, 64)
    assert a(x).shape == (2, 1000)


def test_zero_init_last_starts_blocks_as_identity():
    model = build_model(ModelConfig(name="resnet50", zero_init_last=True))
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in model.layer1)


@pytest.mark.parametrize("bottleneck", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_every_shortcut_and_activation_variant_trains(shortcut, activation, bottleneck):
    torch.manual_seed(0)
    model = ResNet((1, 1, 1), bottleneck, num_classes=10, widths=(8, 16, 32), cifar_stem=True,
                   opts=BlockOptions(shortcut=shortcut, activation=activation))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_gating_bias_init():
    model = build_model(ModelConfig(name="resnet20", shortcut="gating", gate_bias_init=-7.0))
    assert float(model.layer1[0].gate.bias[0].detach()) == -7.0


def test_timm_model_by_name():
    model = build_model(ModelConfig(name="timm/resnet10t", num_classes=7))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_unknown_model_suggests():
    with pytest.raises(ValueError, match="did you mean 'resnet50'"):
        build_model(ModelConfig(name="resnt50"))


# Zagoruyko 2016: WRN-28-10 36.5M, WRN-40-4 8.9M, WRN-16-8 11.0M parameters (CIFAR-10).
WRN_MILLIONS = {"wrn28_10": 36.5, "wrn40_4": 8.9, "wrn16_8": 11.0}


@pytest.mark.parametrize("name", list(WRN_MILLIONS))
def test_cifar_wide_resnets_have_the_papers_size(name):
    model = build_model(ModelConfig(name=name))
    assert round(count_parameters(model) / 1e6, 1) == WRN_MILLIONS[name]
    assert model.conv1.out_channels == 16 and isinstance(model.bn1, torch.nn.Identity)  # the bare 16-channel stem


def test_wide_resnet_dropout_sits_between_the_convs_in_training_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="wrn16_8", block_dropout=0.3))
    x = torch.randn(2, 3, 32, 32)
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b)  # a new dropout mask each pass
    a.sum().backward()
    assert model.layer1[0].conv2.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    plain = build_model(ModelConfig(name="wrn16_8"))
    assert count_parameters(plain) == count_parameters(model)  # dropout adds no parameters
