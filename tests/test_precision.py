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
