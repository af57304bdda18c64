"""The model zoo: shapes, parameter counts of the standard CIFAR variants, features, checkpoints."""

import io

import pytest
import torch

from raypoison.errors import DataError
from raypoison.models import MODELS, build_model, checkpoint_bytes, load_checkpoint, to_device

MEAN, STD = (0.49, 0.48, 0.45), (0.2, 0.2, 0.2)
# (arch, image size, parameters with 10 classes, feature size)
ZOO = [
    ("resnet18", 32, 11_173_962, 512),
    ("resnet34", 32, 21_282_122, 512),
    ("resnet34", 64, 21_289_802, 512),  # the 7x7 stride-2 stem for 64x64 inputs
    ("vgg11", 32, 9_231_114, 512),
    ("vgg16", 64, 14_728_266, 512),
    ("mobilenetv2", 32, 2_296_922, 1280),
    ("convnet", 32, 94_762, 128),
]


@pytest.mark.parametrize("arch, size, params, feature_dim", ZOO)
def test_architecture(arch, size, params, feature_dim):
    model = build_model(arch, 10, MEAN, STD, size).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    x = torch.rand(2, 3, size, size)
    assert model(x).shape == (2, 10)
    assert model.features(x).shape == (2, feature_dim) == (2, model.feature_dim)
    blob = checkpoint_bytes(model, {"image_size": size, "seed": 3})
    loaded, meta = load_checkpoint(blob)
    assert meta["seed"] == 3 and loaded.name == arch
    assert torch.equal(loaded.eval()(x), model(x))


def test_a_narrow_resnet18_keeps_its_width_through_a_checkpoint():
    model = build_model("resnet18", 10, MEAN, STD, 32, {"width": 16}).eval()
    # every convolution has a sixteenth of the weights; BatchNorm and head scale by a quarter
    assert sum(p.numel() for p in model.parameters()) == 701_466
    x = torch.rand(2, 3, 32, 32)
    assert model.features(x).shape == (2, 128) == (2, model.feature_dim)
    loaded, _ = load_checkpoint(checkpoint_bytes(model, {"image_size": 32}))
    assert loaded.feature_dim == 128 and torch.equal(loaded.eval()(x), model(x))


def test_a_model_on_the_cpu_goes_channels_last_and_computes_the_same():
    model = build_model("resnet18", 10, MEAN, STD, 32, {"width": 16}).eval()
    x = torch.rand(4, 3, 32, 32)
    before = model(x)
    moved = to_device(model, "cpu")
    convs = [m.weight for m in moved.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not any(w.is_contiguous() for w in convs if w.shape[-1] > 1)
    assert torch.allclose(moved(x), before, atol=1e-5)
    loaded, _ = load_checkpoint(checkpoint_bytes(moved, {"image_size": 32}))
    assert torch.allclose(loaded.eval()(x), before, atol=1e-5)


def test_vgg16s_last_pool_max_is_the_benchmarks_sixth_max_pool_on_64_px_images():
    """``aks2203/poisoning-benchmark``'s VGG16 plan ends ``..., "M", "M"``: on 64-px images the
    fifth pool leaves 2x2, the sixth takes its maximum. ``avg`` (the default) averages it."""
    torch.manual_seed(0)
    avg = build_model("vgg16", 10, MEAN, STD, 64).eval()
    top = build_model("vgg16", 10, MEAN, STD, 64, {"last_pool": "max"}).eval()
    top.load_state_dict(avg.state_dict())  # no weights in a pool: the same network otherwise
    x = torch.rand(2, 3, 64, 64)
    normalized = (x - avg.mean) / avg.std
    grid = avg.extractor.features[:-1](normalized)  # through the fifth pool
    assert grid.shape == (2, 512, 2, 2)
    assert torch.allclose(top.features(x), grid.amax(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(avg.features(x), grid.mean(dim=(2, 3)), atol=1e-6)
    loaded, _ = load_checkpoint(checkpoint_bytes(top, {"image_size": 64}))
    assert torch.equal(loaded.eval()(x), top(x))  # the choice travels with the checkpoint
    small = torch.rand(2, 3, 32, 32)  # 1x1 after the fifth pool: both are the identity
    small_max = build_model("vgg16", 10, MEAN, STD, 32, {"last_pool": "max"}).eval()
    small_max.load_state_dict(avg.state_dict())
    assert torch.equal(small_max(small), avg(small))
    with pytest.raises(ValueError, match="last_pool must be 'avg' or 'max', got 'Max'"):
        build_model("vgg16", 10, MEAN, STD, 64, {"last_pool": "Max"})  # as a checkpoint may say
    from raypoison.core.identity import identity_of
    from raypoison.models.vgg import VGG16Params

    assert identity_of(VGG16Params()) == {}  # the default adds nothing to trial ids or caches


def test_every_registered_model_is_covered():
    assert {arch for arch, *_ in ZOO} == set(MODELS.names())


@pytest.mark.parametrize("arch, head", [("resnet18", "linear"), ("vgg11", "classifier")])
def test_reference_checkpoints_import(tmp_path, arch, head):
    model = build_model(arch, 100, MEAN, STD).eval()
    state = {}
    for key, value in model.state_dict().items():
        if key in ("mean", "std"):
            continue  # the reference format has no normalization inside the model
        name = key.replace("head.", f"{head}.", 1) if key.startswith("head.") else key[10:]
        state[f"module.{name}"] = value  # as saved from DataParallel
    torch.save({"net": state}, tmp_path / "ref.pth")
    loaded, meta = load_checkpoint(tmp_path / "ref.pth", arch=arch, mean=MEAN, std=STD)
    x = torch.rand(2, 3, 32, 32)
    assert meta["imported_from"] == "reference" and loaded.head.out_features == 100
    assert torch.allclose(loaded.eval()(x), model(x))
    with pytest.raises(DataError, match="needs its architecture"):
        load_checkpoint(tmp_path / "ref.pth")


class NotAWeight:
    pass


def test_unsafe_or_corrupt_checkpoints_are_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"format": "raypoison/1", "payload": NotAWeight()}, buffer)
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_checkpoint(buffer.getvalue())  # weights_only refuses the custom class
    good = checkpoint_bytes(build_model("convnet", 10, MEAN, STD), {})
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_checkpoint(good[: len(good) // 2])
    with pytest.raises(DataError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "absent.pt")
