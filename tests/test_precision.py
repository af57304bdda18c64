"""The bf16 autocast path of the one training loop, exercised on the CPU so that it cannot rot
unseen before a GPU runs it (on CUDA it also trains channels-last)."""

import dataclasses

import torch

from raypoison.core.registry import build_component
from raypoison.data import DATASETS, load_dataset
from raypoison.models import build_model
from raypoison.training.loop import accuracy, train
from raypoison.training.recipe import RecipeConfig


def test_bf16_autocast_trains_and_evaluates_on_the_cpu():
    data = load_dataset(build_component({"name": "synthetic", "params": {
        "classes": 4, "image_size": 12, "train_per_class": 40, "test_per_class": 20,
        "noise": 0.2, "seed": 3}}, "dataset", DATASETS))
    recipe = RecipeConfig(lr=0.05, epochs=6, milestones=(), batch_size=32)
    results = {}
    for precision in ("float32", "bf16"):
        torch.manual_seed(0)
        model = build_model("convnet", 4, data.mean, data.std, 12, None)
        result = train(model, data.train_x, data.train_y,
                       recipe=dataclasses.replace(recipe, precision=precision), seed=1,
                       trainable="all")
        assert torch.isfinite(torch.tensor(result.final_loss))
        results[precision] = (result.final_loss, accuracy(model, data.test_x, data.test_y))
        assert all(p.dtype == torch.float32 for p in model.parameters())  # float32 weights
    assert results["bf16"][1] > 0.6  # it learns: 4 classes, chance is 0.25
    assert results["bf16"][0] != results["float32"][0]  # autocast did round the forward pass


def test_auto_precision_is_bf16_on_cuda_only_and_crafting_is_planned_in_float32():
    from raypoison.execution.cost import Cell, Count
    from raypoison.execution.device_rates import Device
    from raypoison.execution.plan_text import _precision
    from raypoison.training.recipe import uses_bf16

    assert uses_bf16("auto", "cuda:0") and uses_bf16("auto", torch.device("cuda"))
    assert not uses_bf16("auto", "cpu") and not uses_bf16("float32", "cuda")
    assert uses_bf16("bf16", "cpu")
    gpu = Device("a gpu", float32=1e12, bf16=4e12)
    count = Count(flops=4e12)
    assert gpu.seconds(count, "auto") == 1.0 and gpu.seconds(count, "float32") == 4.0
    cpu = Device("a cpu", float32=1e12, bf16=4e12, kind="cpu")
    assert cpu.seconds(count, "auto") == 4.0
    cell = Cell("s", "a", 1, {}, "auto")
    assert _precision("craft", cell) == "float32" and _precision("train", cell) == "auto"


def test_a_bf16_bank_and_its_poisons_come_from_the_same_autocast():
    """Under bf16 the pool's features and the poisons' (computed batch by batch) must round
    alike, or poisons would stand apart from clean images by precision alone."""
    from raypoison.data.augment import identity_view
    from raypoison.training.feature_bank import TrainingFeatures, view_features

    torch.manual_seed(0)
    model = build_model("convnet", 4, (0.5,) * 3, (0.25,) * 3, 12, None).eval()
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    view = identity_view()
    full = view_features(model, images, views=[view])[0]
    half = view_features(model, images, views=[view], bf16=True)[0]
    assert not torch.equal(full, half)  # autocast did round
    assert torch.allclose(full, half, rtol=0.05, atol=0.05)
    for bf16, bank in ((False, full), (True, half)):
        features = TrainingFeatures(bank[None, :3], torch.arange(3), model, images[3:],
                                    pool_views=[view], bf16=bf16)
        got = features.lookup(torch.arange(6), torch.full((6,), view))
        assert torch.equal(got[:3], bank[:3])
        assert torch.allclose(got[3:], bank[3:], rtol=0, atol=1e-6)  # poisons as the bank
