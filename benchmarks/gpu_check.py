"""The device check: one command that measures what only a GPU can tell, without Ray.

    python3 benchmarks/gpu_check.py --data data/cifar10-jpeg --out $OUT/gpu_check.json \
        --scratch /tmp/gc_scratch --deadline-seconds 300
    python3 benchmarks/gpu_check.py --tiny            # the CPU, CI-sized: proves it works

The lent GPU machine has PyTorch (and pandas, pyarrow, pyyaml, pillow) but not Ray; the trial code
is Ray-free, so this runs the project's own training loop and trial path there. Copy the shared
CIFAR-10 JPEG folder into an ignored folder of the checkout (``data/`` is ignored) and name it in
the device call's ``carry``. Each stage is timed and guarded: a stage that fails records its error
and the next one runs, and the JSON is rewritten whole after every stage and within the long
ones (after each trial, attack or process count; the pilot's after its pre-training and every
chunk of pairs, marked ``partial``), so a run stopped at its limit still returns what it
measured; no stage starts after ``--deadline-seconds`` from the call's start (it is recorded as
skipped). Stages:

1. ``environment``: torch, device, memory.
2. ``epoch``: one epoch of a full-width ResNet-18 on the training set (50,000 images), float32
   and then bf16 autocast with channels-last (``precision: bf16``), images per second and peak
   memory each, each after a few untimed warm-up steps.
   Then ``calibration`` turns them into FLOP rates (the FLOPs of one of their steps counted as
   ``raypoison plan`` counts them) and a cost per step (timed linear-head steps), written as a
   calibration file beside ``--out`` for ``raypoison plan --calibration FILE --device NAME``.
   Then ``host_copies`` times training steps (the network's, and a head's on an augmented
   feature bank) with each step's random draws copied to the GPU blocking and through pinned
   memory, and checks that both give the same weights.
3. ``trials``: one transfer trial per attack (the no-attack control: a 40-epoch head on 2,500
   images from the feature bank; Feature Collision, Convex and Bullseye Polytope with 25 poisons,
   Hidden Trigger Backdoor) on the ResNet-18 of stage 2, through ``run_trial`` as a worker runs
   it; crafting runs with fewer iterations than the protocol's (``--craft-scale``), and the
   seconds are also reported scaled up to the protocol's count. The control runs first, and its
   ``seconds_total`` includes building the feature bank and the test features once for all.
4. ``witches_brew``: Witches' Brew crafting, 500 poisons, one restart of a share of the
   iterations, scaled to the protocol's 8 × 250.
5. ``backdoors``: BadNets, Blend, WaNet and the clean-label backdoor from scratch, BadNets with
   every defense, on a small ConvNet and synthetic data through ``run_trial``: whether each of
   these code paths runs on the device (none had run on CUDA), with a status and an error a row.
6. ``sharing``: 1, 2 and 4 processes training at once on the one GPU, each capped at its share
   of the memory (the fractional packing of the workers): aggregate images per second, over
   windows that start together once every process has warmed up.

``--pilot`` (a second call on the same lent machine) runs ``pilot`` instead: a full-width ResNet-18
pre-trained on CIFAR-10's classes 0-4, then the control and Bullseye Polytope paired in transfer
mode on classes 5-9 at the protocol's settings, time-boxed to ``--pilot-seconds`` from the call's
start (330; set it to the device time left less a minute), with success rates, Wilson intervals
and the paired counts:

    python3 benchmarks/gpu_check.py --pilot --data data/cifar10-jpeg --out $OUT/gpu_pilot.json \
        --scratch /tmp/gc_scratch --pilot-seconds 360
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

T0 = time.monotonic()  # before importing torch, which on a fresh GPU machine takes seconds
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROTOCOL_ITERATIONS = {"feature_collision": 120, "convex_polytope": 1200,
                       "bullseye_polytope": 1200, "hidden_trigger_backdoor": 5000}


def _arch(args: argparse.Namespace) -> tuple[str, dict | None]:
    """The network the check trains and crafts on: a full-width ResNet-18 (tiny: a small
    ConvNet)."""
    return ("convnet", {"width": 8}) if args.tiny else ("resnet18", None)


def _dataset(args: argparse.Namespace) -> dict:
    if args.tiny:
        return {"name": "synthetic", "params": {"classes": 10, "image_size": 16,
                                                "train_per_class": 30, "test_per_class": 10,
                                                "noise": 0.2, "seed": 3}}
    folder = Path(args.data).resolve()  # stages may run in another folder (their scratch)
    return {"name": "imagefolder", "params": {
        "root": str(folder / "cifar10-jpg-q75.tar.gz"),
        "train_order": str(folder / "train_labels_original_order.npy"),
        "test_order": str(folder / "test_labels_first512.npy"),
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}}


def _write_json(path: str | Path, doc: dict) -> None:
    """Write ``doc`` whole or not at all: a call killed at its limit mid-write leaves the last
    complete report, not half of one."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, target)


def _peak_mb(device: str) -> float | None:
    if device != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def stage_environment(args, device, state) -> dict:
    out: dict[str, Any] = {"torch": torch.__version__, "device": device,
                           "cpu_threads": torch.get_num_threads(), "tiny": args.tiny}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}",
                   bf16=torch.cuda.is_bf16_supported(),
                   # "float32" convolutions run as TF32 where cuDNN allows it (its default)
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32,
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    state["environment"] = out
    return out


def stage_epoch(args, device, state) -> dict:
    from raypoison.core.registry import build_component
    from raypoison.data import DATASETS, load_dataset
    from raypoison.models import build_model, to_device
    from raypoison.training.loop import accuracy, train
    from raypoison.training.recipe import RecipeConfig

    tick = time.perf_counter()
    data = load_dataset(build_component(_dataset(args), "dataset", DATASETS))
    state["data"] = data
    out: dict[str, Any] = {"decode_seconds": round(time.perf_counter() - tick, 2),
                           "train_images": len(data.train_y)}
    data = data.to(device)
    arch, params = _arch(args)
    for precision in ("float32", "bf16"):
        torch.manual_seed(0)
        model = to_device(build_model(arch, data.num_classes, data.mean, data.std,
                                      data.image_shape[1], params), device)
        recipe = RecipeConfig(lr=0.1, epochs=1, milestones=(), batch_size=args.batch_size,
                              weight_decay=5e-4, precision=precision)
        # untimed warm-up steps on a copy, so that library start-up and kernel selection are
        # charged to neither precision (the first timed would otherwise carry them)
        train(copy.deepcopy(model), data.train_x, data.train_y, recipe=recipe, seed=1,
              trainable="all", max_steps=2 if args.tiny else 20)
        _reset_peak(device)
        result = train(model, data.train_x, data.train_y, recipe=recipe, seed=1,
                       trainable="all")
        if device == "cuda":
            torch.cuda.synchronize()
        out[precision] = {"seconds": round(result.seconds, 2),
                          "images_per_second": round(len(data.train_y) / result.seconds, 1),
                          "peak_memory_mb": _peak_mb(device),
                          "test_accuracy_after_one_epoch": round(
                              accuracy(model, data.test_x, data.test_y), 4)}
        state["model"] = model.cpu()
    out["arch"] = arch
    out["bf16_speedup"] = round(out["float32"]["seconds"] / out["bf16"]["seconds"], 2)
    state["epoch"] = out
    return out


def stage_calibration(args, device, state) -> dict:
    """This device as ``raypoison plan`` reads one: float32 and bf16 FLOP rates from the epoch
    stage's timed epochs, with the FLOPs of one of their training steps counted as the planner
    counts them, and the fixed cost per step from timed linear-head steps (as ``plan
    --calibrate`` measures a CPU). Written beside ``--out`` as a calibration file
    (``*_calibration.json``) for ``raypoison plan --calibration FILE --device NAME``."""
    from raypoison.training.flops import counted, head_step_cost, rate_and_overhead
    from raypoison.training.loop import train
    from raypoison.training.recipe import RecipeConfig

    epoch, model = state["epoch"], state["model"].to(device)
    data = state["data"].to(device)
    batch = args.batch_size
    x, y = data.train_x[:batch], data.train_y[:batch]
    recipe = RecipeConfig(lr=0.1, epochs=1, milestones=(), batch_size=batch, weight_decay=5e-4)
    step_flops = counted(lambda: train(copy.deepcopy(model), x, y, recipe=recipe, seed=1,
                                       trainable="all", max_steps=1))
    head_flops, small = head_step_cost(model.feature_dim, data.num_classes, batch, device,
                                       steps=200 if args.tiny else 2000, warmup=20)
    steps = -(-epoch["train_images"] // batch)
    fits = {p: rate_and_overhead(step_flops, epoch[p]["seconds"] / steps,  # augmentation in
                                 head_flops, small) for p in ("float32", "bf16")}
    rates = {p: rate for p, (rate, _) in fits.items()}
    overhead = fits["float32"][1]
    env = state.get("environment", {})
    gpu = env.get("name") or f"{device} ({torch.get_num_threads()} threads)"
    name = args.device_name or ("-".join(gpu.lower().split()[:2]) + "-measured"
                                if device == "cuda" else f"{device}-gpu-check")
    entry = {"description": f"{gpu}, measured by gpu_check on {epoch['arch']} at batch {batch}",
             "float32": rates["float32"], "bf16": rates["bf16"], "seconds_per_step": overhead,
             "source": f"measured {time.strftime('%Y-%m-%d')} (benchmarks/gpu_check.py)",
             "kind": "gpu" if device == "cuda" else "cpu"}
    target = Path(args.out).with_name(Path(args.out).stem + "_calibration.json")
    target.write_text(json.dumps({"devices": {name: entry}}, indent=2) + "\n")
    return {"device_name": name, "file": str(target), "step_flops": step_flops,
            "head_step_flops": head_flops, "head_step_seconds": small,
            "float32_tflops": round(rates["float32"] / 1e12, 3),
            "bf16_tflops": round(rates["bf16"] / 1e12, 3)}


def stage_host_copies(args, device, state) -> dict:
    """What copying each step's random draws through pinned memory saves
    (:mod:`raypoison.core.host_copy`): training steps of the epoch stage's network (bf16) and of a
    linear head on an augmented feature bank, with the draws copied the plain blocking way and
    the pinned way, alternating, the best of two each. The same draws either way: the head's
    weights come out equal (reported); the network's differ only as far as cuDNN's
    nondeterministic kernels make any two runs differ."""
    from raypoison.core import host_copy
    from raypoison.training.feature_bank import TrainingFeatures
    from raypoison.training.loop import train
    from raypoison.training.recipe import RecipeConfig

    model, data = state["model"].to(device), state["data"].to(device)
    batch = args.batch_size
    steps = 5 if args.tiny else 100
    x, y = data.train_x[:batch * steps], data.train_y[:batch * steps]
    full = RecipeConfig(lr=0.1, epochs=1, milestones=(), batch_size=batch, weight_decay=5e-4,
                        precision="bf16")
    head_recipe = RecipeConfig(lr=0.01, epochs=4 if args.tiny else 40, milestones=(),
                               batch_size=batch, weight_decay=5e-4)
    pool = 250 if args.tiny else 2500
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(162, pool, model.feature_dim, generator=generator).to(device)
    features = TrainingFeatures(bank, torch.arange(pool, device=device), model,
                                data.train_x[:0])
    head_y = data.train_y[:pool]

    def timed(pinned: bool, what: str) -> tuple[float, int, torch.Tensor]:
        host_copy.PINNED = pinned
        victim = copy.deepcopy(model)
        try:
            if device == "cuda":
                torch.cuda.synchronize()
            tick = time.perf_counter()
            if what == "network":
                result = train(victim, x, y, recipe=full, seed=1, trainable="all",
                               max_steps=steps)
            else:
                result = train(victim, data.train_x[:pool], head_y, recipe=head_recipe, seed=1,
                               trainable="head", features=features)
            if device == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - tick, result.steps,
                    victim.head.weight.detach().float().cpu())
        finally:
            host_copy.PINNED = True

    out: dict[str, Any] = {}
    for what in ("network", "head"):
        timed(True, what)  # warm-up
        seconds: dict[bool, list[float]] = {False: [], True: []}
        weights = {}
        for pinned in (False, True, False, True):
            took, n, weights[pinned] = timed(pinned, what)
            seconds[pinned].append(took)
        out[what] = {"steps": n,
                     "blocking_ms_per_step": round(1000 * min(seconds[False]) / n, 3),
                     "pinned_ms_per_step": round(1000 * min(seconds[True]) / n, 3),
                     "speedup": round(min(seconds[False]) / min(seconds[True]), 3),
                     "max_weight_difference": float((weights[False] - weights[True]).abs().max())}
    return out


def crafting_iterations(args: argparse.Namespace) -> dict[str, int]:
    return {k: max(1, round(v * args.craft_scale)) for k, v in PROTOCOL_ITERATIONS.items()}


def _transfer_scenario(args: argparse.Namespace, name: str, dataset: dict, arch: str,
                       checkpoint: Path, trials: int) -> dict:
    """A transfer scenario on one pre-trained network at the protocol's sizes (250 images a
    class, 25 poisons, ε 8/255; the tiny form's smaller)."""
    params = _arch(args)[1]
    return {"name": name, "dataset": dataset,
            "models": {"net": {"arch": arch, "checkpoint": str(checkpoint),
                               **({"params": params} if params else {})}},
            "attacker": "net", "victims": ["net"],
            "budget": 5 if args.tiny else 25, "epsilon": "8/255",
            "train_per_class": 15 if args.tiny else 250, "trials": trials}


def trials_config(args: argparse.Namespace, arch: str, checkpoint: Path) -> dict:
    """The trials stage's benchmark config: one transfer trial per attack at the protocol's
    sizes (the tiny form's smaller), crafting at ``--craft-scale`` of the protocol's iterations."""
    iterations = crafting_iterations(args)
    return {
        "name": "gpu-check",
        "scenarios": [{
            **_transfer_scenario(args, "transfer", _dataset(args), arch, checkpoint, 1),
            "patch_size": 3 if args.tiny else 5,
            "recipe": {"epochs": 2 if args.tiny else 40, "milestones": [1 if args.tiny else 30]},
        }],
        "attacks": [{"name": "none"}]
        + [{"name": name, "params": {"iterations": iterations[name]}}
           for name in PROTOCOL_ITERATIONS],
    }


def stage_trials(args, device, state) -> dict:
    from raypoison.attacks.crafting import iterations_computed
    from raypoison.config.specs import expand
    from raypoison.config.suite import parse_suite
    from raypoison.models import checkpoint_bytes
    from raypoison.trial.context import TrialContext
    from raypoison.trial.run import run_trial

    model = state["model"]
    folder = Path(args.scratch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.pt").write_bytes(checkpoint_bytes(model, {"image_size": model_size(state)}))
    iterations = crafting_iterations(args)
    suite = parse_suite(trials_config(args, model.name, folder / "net.pt"))
    # the epoch stage's decoded images: the same data set, not decoded a second time
    ctx = TrialContext(suite.scenarios[0], state["data"], {"net": folder / "net.pt"}, device)
    out: dict[str, Any] = {"craft_scale": args.craft_scale}
    for spec in expand(suite):
        _reset_peak(device)
        rows = run_trial(spec, ctx)
        row = rows[0]
        name = spec.attack.name
        entry = {k: (round(row[k], 3) if isinstance(row.get(k), float) else row.get(k))
                 for k in ("status", "seconds_craft", "seconds_train", "seconds_eval",
                           "seconds_total", "clean_accuracy", "error")}
        entry["peak_memory_mb"] = _peak_mb(device)
        ran = row.get("attack_iterations")
        if name in iterations and row.get("seconds_craft") and ran:
            # per iteration computed: Feature Collision's step rule and the Hidden Trigger
            # Backdoor's loss threshold can stop before the configured count (the loop computes
            # on to its next read of the stop), so the protocol's count times it is what a
            # trial that runs to the end would cost (an upper bound)
            computed = iterations_computed(ran, iterations[name])
            per = row["seconds_craft"] / computed
            entry.update(iterations_configured=iterations[name], iterations_ran=ran,
                         iterations_computed=computed, seconds_per_iteration=round(per, 5),
                         seconds_craft_at_protocol_iterations=round(
                             per * PROTOCOL_ITERATIONS[name], 1))
        out[spec.attack.label] = entry
        state["save"](out)  # a call stopped at its limit keeps the trials that finished
    return out


def stage_witches_brew(args, device, state) -> dict:
    """Witches' Brew crafting on the ResNet-18 of the epoch stage, at the from-scratch protocol's
    budget (1% of the training set: 500 poisons) with one restart of a share of the 250
    iterations, scaled up to the protocol's 8 restarts × 250. The per-trial crafting model
    (``fresh_model``) costs 40 epochs on top: the epoch stage's seconds × 40."""
    from raypoison.attacks import create_attack
    from raypoison.attacks.context import StandaloneContext
    from raypoison.data.setups import Setup

    data = state["data"].to(device)
    model = state["model"].to(device)
    budget = 20 if args.tiny else 500
    iterations = max(2, round(250 * args.craft_scale))
    ctx = StandaloneContext(data, {"net": model}, device=device)
    bases = tuple(int(i) for i in torch.nonzero(data.train_y == 1).flatten()[:budget].cpu())
    target = int(torch.nonzero(data.test_y == 0).flatten()[0])
    setup = Setup(target_class=0, target_index=target, base_class=1, base_indices=bases)
    attack = create_attack("witches_brew", {"iterations": iterations, "restarts": 1})
    # untimed: the double-backward kernels' first load, which the scaling to 8 x 250
    # iterations must not multiply
    create_attack("witches_brew", {"iterations": 2, "restarts": 1}).craft(ctx, setup, seed=0,
                                                                         index=0)
    _reset_peak(device)
    tick = time.perf_counter()
    result = attack.craft(ctx, setup, seed=0, index=0)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tick
    if result.poisons is None:
        raise RuntimeError("Witches' Brew crafted no poisons")
    linf = float((result.poisons.images.int() - data.train_x[list(bases)].int()).abs().max())
    return {"poisons": budget, "iterations": iterations, "restarts": 1,
            "seconds_craft": round(seconds, 2),
            "seconds_craft_at_protocol": round(seconds * 8 * 250 / iterations, 1),
            "loss_initial": result.loss_initial, "loss_final": result.loss_final,
            "linf_255": linf, "peak_memory_mb": _peak_mb(device)}


def _defense_params(tiny: bool) -> dict[str, dict]:
    """Every defense, sized for seconds on the backdoor stage's small model: a check that the
    code runs, not a repair or a detection worth reading."""
    steps = 5 if tiny else 50
    return {
        "fine_tuning": {"epochs": 2}, "fine_pruning": {"tune": {"epochs": 2}},
        "pivotal_tuning": {"steps": steps, "param_mean": "resnet18"},
        "neural_attention_distillation": {"teacher": {"epochs": 2}, "student": {"epochs": 2}},
        "neural_attention_distillation_pyp": {"steps": steps, "teacher_steps": steps},
        "neural_cleanse": {"steps": steps},
        "calibrated_trigger_inversion": {"steps": 2 if tiny else 20,
                                         "repair": {"steps": steps, "param_mean": "resnet18"}},
    }


def stage_backdoors(args, device, state) -> dict:
    """Every backdoor attack from scratch and every defense once, through ``run_trial`` on the
    device: a narrow ResNet-18 (every defense accepts it; one distils a ResNet's stages) on
    synthetic data, trained under the recipe's precision. No code of these had run on CUDA
    before; this says whether each does (``status`` and ``error`` per row) and how long each took
    at this toy size, not what they cost or achieve at the protocol's."""
    from raypoison.config.specs import expand
    from raypoison.config.suite import parse_suite
    from raypoison.core.registry import build_component
    from raypoison.data import DATASETS, load_dataset
    from raypoison.defenses import DEFENSES
    from raypoison.models import build_model, checkpoint_bytes, to_device
    from raypoison.training.loop import train
    from raypoison.training.recipe import RecipeConfig
    from raypoison.trial.context import TrialContext
    from raypoison.trial.run import run_trial

    poisons = 20 if args.tiny else 40
    size = 16 if args.tiny else 32
    dataset = {"name": "synthetic", "params": {
        "classes": 4, "image_size": size, "train_per_class": 60 if args.tiny else 250,
        "test_per_class": 25, "noise": 0.2, "seed": 3}}
    # the clean-label backdoor perturbs its poisons on a trained model: one, briefly trained
    data = load_dataset(build_component(dataset, "dataset", DATASETS)).to(device)
    torch.manual_seed(0)
    adv = to_device(build_model("convnet", data.num_classes, data.mean, data.std, size,
                                {"width": 8}), device)
    train(adv, data.train_x, data.train_y, seed=0, trainable="all",
          recipe=RecipeConfig(lr=0.05, epochs=2, milestones=(), batch_size=32))
    folder = Path(args.scratch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adv.pt").write_bytes(checkpoint_bytes(adv.cpu(), {"image_size": size}))
    raw = {
        "name": "gpu-check-backdoors",
        "scenarios": [{
            "name": "scratch", "mode": "scratch", "dataset": dataset,
            "models": {"net": {"arch": "resnet18", "params": {"width": 8}},
                       "adv": {"arch": "convnet", "params": {"width": 8},
                               "checkpoint": str(folder / "adv.pt")}},
            "attacker": "adv", "victims": ["net"], "budget": 1, "epsilon": "8/255", "trials": 1,
            "train_per_class": 50 if args.tiny else 200, "trusted_per_class": 10,
            "patch_size": 3, "asr_scope": "other_classes",
            "recipe": {"lr": 0.05, "epochs": 2 if args.tiny else 8, "milestones": [],
                       "batch_size": 32}}],
        "attacks": [{"name": name, "params": {"poisons": poisons}}
                    for name in ("badnets", "blend", "wanet")]
        + [{"name": "clean_label_backdoor", "params": {"steps": 5}}],
        "defenses": [{"name": name, "params": _defense_params(args.tiny).get(name, {})}
                     for name in DEFENSES.names()],
    }
    suite = parse_suite(raw)
    ctx = TrialContext.create(suite.scenarios[0], {"adv": folder / "adv.pt"}, device)
    out: dict[str, Any] = {}
    for spec in expand(suite):
        if spec.attack.name != "badnets":  # one attack defended: the defenses' paths once
            spec = dataclasses.replace(spec, defenses=())
        _reset_peak(device)
        rows = run_trial(spec, ctx)
        out[spec.attack.label] = {
            row.get("defense") or "none": {
                "status": row.get("status"), "error": (row.get("error") or "")[:300] or None,
                "seconds": round(row.get("seconds_defense") or row.get("seconds_total") or 0, 2)}
            for row in rows}
        out[spec.attack.label]["peak_memory_mb"] = _peak_mb(device)
        state["save"](out)
    out["failed"] = sum(r["status"] != "ok" for a in out.values() for r in a.values()
                        if isinstance(r, dict))
    return out


def _pilot_dataset(args: argparse.Namespace, classes: list[int]) -> dict:
    if args.tiny:  # two synthetic data sets stand in for the two halves of CIFAR-10
        return {"name": "synthetic", "params": {"classes": 5, "image_size": 16,
                                                "train_per_class": 40, "test_per_class": 20,
                                                "noise": 0.2, "seed": 3 + classes[0]}}
    spec = _dataset(args)
    return {**spec, "params": {**spec["params"], "classes": classes}}


def pilot_config(args: argparse.Namespace, checkpoint: Path) -> dict:
    """The pilot's benchmark config: the control and Bullseye Polytope in transfer mode on
    CIFAR-10's classes 5-9 at the protocol's settings (the tiny form's smaller)."""
    return {
        "name": "gpu-pilot",
        "scenarios": [{
            **_transfer_scenario(args, "pilot-transfer", _pilot_dataset(args, [5, 6, 7, 8, 9]),
                                 _arch(args)[0], checkpoint, args.pilot_trials),
            "mode": "transfer",
            **({"recipe": {"epochs": 2, "milestones": [1]}} if args.tiny else {}),
        }],
        "attacks": [{"name": "none"}, {"name": "bullseye_polytope",
                                       **({"params": {"iterations": 5}} if args.tiny else {})}],
    }


def stage_pilot(args, device, state) -> dict:
    """The first paper-scale fidelity pilot (``--pilot``): a full-width ResNet-18 pre-trained on
    CIFAR-10's classes 0-4 (there is no CIFAR-100 offline), then trials of the control and
    Bullseye Polytope at the protocol's settings in transfer mode on classes 5-9 (250 images a
    class, 25 poisons, ε 8/255, the protocol's 40-epoch head on the frozen extractor), paired on
    the same targets, until ``--pilot-trials`` pairs or ``--pilot-seconds`` from the call's start.

    The images are decoded once for both halves. Pairs run in chunks as a worker runs a batch:
    each attack's trials of a chunk crafted together and their heads trained together
    (``run_trials(..., batch_heads=True)``; the same trials as one by one). The first chunk is
    one pair, started only with ``--pilot-first-pair-seconds`` left; then a chunk of k pairs starts
    only if its estimate, with a quarter's margin, ends before the deadline, so the call is not
    killed in the middle of one. A chunk costs a fixed part (one batched crafting, one batch of
    heads) and a part a pair, so its estimate never takes a larger chunk's cost a pair for a
    smaller one: k times the first pair's seconds (which also built the bank: an overestimate),
    and no more than the last chunk's seconds where k is no larger, or that many of it where
    larger (:func:`chunk_estimate`)."""
    from raypoison.config.specs import expand
    from raypoison.config.suite import parse_suite
    from raypoison.core.registry import build_component
    from raypoison.data import DATASETS, load_dataset
    from raypoison.models import build_model, checkpoint_bytes, to_device
    from raypoison.training.loop import accuracy, train
    from raypoison.training.recipe import RecipeConfig
    from raypoison.trial.context import TrialContext
    from raypoison.trial.run import run_trials

    deadline = args.start + args.pilot_seconds

    def decoded(classes: list[int]) -> Any:
        return load_dataset(build_component(_pilot_dataset(args, classes), "dataset", DATASETS))

    tick = time.perf_counter()
    if args.tiny:  # two synthetic data sets stand in for the two halves
        source, target = decoded([0, 1, 2, 3, 4]), decoded([5, 6, 7, 8, 9])
    else:
        full = load_dataset(build_component(_dataset(args), "dataset", DATASETS))
        source, target = full.select_classes([0, 1, 2, 3, 4]), full.select_classes([5, 6, 7, 8, 9])
        del full
    decode_seconds = round(time.perf_counter() - tick, 1)
    source = source.to(device)
    arch, params = _arch(args)
    torch.manual_seed(0)
    model = to_device(build_model(arch, source.num_classes, source.mean, source.std,
                                  source.image_shape[1], params), device)
    recipe = RecipeConfig(lr=0.2, epochs=args.pilot_epochs, schedule="onecycle",
                          batch_size=256, weight_decay=5e-4, nesterov=True,
                          precision="auto")  # pre-training is not the protocol's: fast
    result = train(model, source.train_x, source.train_y, recipe=recipe, seed=0, trainable="all")
    out: dict[str, Any] = {"decode_seconds": decode_seconds, "pretrain": {
        "arch": arch, "classes": "0-4", "epochs": args.pilot_epochs, "precision": "auto",
        "seconds": round(result.seconds, 1),
        "clean_accuracy": round(accuracy(model, source.test_x, source.test_y), 4)}}
    del source
    folder = Path(args.scratch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pilot.pt").write_bytes(checkpoint_bytes(model.cpu(), {
        "image_size": 16 if args.tiny else 32}))
    suite = parse_suite(pilot_config(args, folder / "pilot.pt"))
    ctx = TrialContext(suite.scenarios[0], target, {"net": folder / "pilot.pt"}, device)
    specs = {(s.index, s.attack.name): s for s in expand(suite)}
    indices = sorted({i for i, _ in specs})
    by_trial: dict[int, dict[str, dict]] = {}
    save = state.get("save", lambda partial: None)
    save(out)  # a call stopped at its limit still returns the pre-training figures ...
    first: float | None = None  # the one-pair first chunk's seconds
    last = (1, 0.0)  # the last chunk's pairs and seconds
    done = 0
    while done < len(indices):
        left = deadline - time.monotonic()
        if first is None:
            n = 1 if left >= args.pilot_first_pair_seconds and left > 0 else 0
        else:
            n = max((k for k in range(1, args.pilot_chunk + 1)
                     if 1.25 * chunk_estimate(k, first, *last) <= left), default=0)
        if n < 1:
            break
        chunk = indices[done:done + n]
        tick = time.monotonic()
        for attack in ("none", "bullseye_polytope"):
            rows = run_trials([specs[i, attack] for i in chunk], ctx, batch_heads=True)
            for i, trial_rows in zip(chunk, rows, strict=True):
                by_trial.setdefault(i, {})[attack] = trial_rows[0]
        took = max(1e-3, time.monotonic() - tick)
        first = took if first is None else first
        last = (len(chunk), took)
        done += len(chunk)
        save(_pilot_summary(out, by_trial, args.pilot_trials))  # ... and every chunk's pairs
    return _pilot_summary(out, by_trial, args.pilot_trials)


def chunk_estimate(k: int, first: float, last_pairs: int, last_seconds: float) -> float:
    """Seconds a chunk of ``k`` pairs should take, from the first (one-pair) chunk's seconds and
    the last chunk's: a chunk's cost grows with its pairs, but less than in proportion (its
    crafting and heads run batched), so ``k`` single pairs bound it, and so does the last chunk
    where it had as many pairs, or ``ceil(k / last_pairs)`` such chunks where it had fewer."""
    single = k * first
    if k <= last_pairs:
        return min(single, last_seconds)
    return min(single, last_seconds * -(-k // last_pairs))


def _pilot_summary(out: dict, by_trial: dict[int, dict[str, dict]], planned: int) -> dict:
    """``out`` (the pre-training figures) with the success of the finished pairs of trials."""
    from raypoison.analysis.stats import mcnemar_exact, wilson

    out = dict(out)
    pairs = {i: t for i, t in by_trial.items() if len(t) == 2}
    for attack in ("none", "bullseye_polytope"):
        rows = [t[attack] for t in pairs.values()]
        wins = sum(bool(r.get("success")) for r in rows)
        low, high = wilson(wins, len(rows)) if rows else (float("nan"), float("nan"))
        out[attack] = {
            "trials": len(rows), "successes": wins,
            "success_percent": round(100 * wins / len(rows), 1) if rows else None,
            "wilson95_percent": [round(100 * low, 1), round(100 * high, 1)],
            "failed": sum(r.get("status") != "ok" for r in rows),
            "clean_accuracy_median": (round(float(np.median([r["clean_accuracy"] for r in rows
                                                             if r.get("clean_accuracy")])), 4)
                                      if rows else None),
            "seconds_per_trial_median": (round(float(np.median([r["seconds_total"]
                                                                for r in rows])), 2)
                                         if rows else None)}
    only_bp = sum(bool(t["bullseye_polytope"].get("success")) and not t["none"].get("success")
                  for t in pairs.values())
    only_none = sum(bool(t["none"].get("success")) and not t["bullseye_polytope"].get("success")
                    for t in pairs.values())
    out["paired"] = {"pairs": len(pairs), "only_bullseye_polytope": only_bp,
                     "only_control": only_none,
                     "mcnemar_p": round(mcnemar_exact(only_bp, only_none), 5)}
    out["stopped_by_time"] = len(pairs) < planned
    return out


def model_size(state) -> int:
    return int(state["data"].image_shape[1])


SHARING_WORKER = """
import sys, time, torch
sys.path.insert(0, {root!r})
from raypoison.models import build_model
k, seconds, tiny, batch = {k}, {seconds}, {tiny}, {batch}
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cuda":
    torch.cuda.set_per_process_memory_fraction({cap})
else:
    torch.set_num_threads(1)
size = 16 if tiny else 32
model = build_model("convnet" if tiny else "resnet18", 10, (0.5,) * 3, (0.25,) * 3, size,
                    {{"width": 8}} if tiny else None).to(device).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.rand(batch, 3, size, size, device=device)
if device == "cuda":  # the layout the training loop uses under bf16 on CUDA
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (batch,), device=device)
steps, start = 0, None
while True:
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(); loss.backward(); opt.step(); steps += 1
    if steps == 3:  # warmed up: wait until every process is, so that their windows overlap
        if device == "cuda": torch.cuda.synchronize()
        print("ready", flush=True)
        sys.stdin.readline()
        start, counted = time.perf_counter(), 0
    elif start is not None:
        counted += 1
        if time.perf_counter() - start > seconds:
            break
if device == "cuda": torch.cuda.synchronize()
rate = counted * batch / (time.perf_counter() - start)
peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
print(rate, peak)
"""


def stage_sharing(args, device, state) -> dict:
    """``k`` processes training at once, each capped as a worker holding 1/k of the GPU caps
    itself (:func:`raypoison.core.gpu_memory.memory_share`); they warm up, then all start their
    timed window together (each says ``ready`` and waits for ``go``)."""
    from raypoison.core.gpu_memory import memory_share

    out: dict[str, Any] = {}
    seconds = 1 if args.tiny else 20
    total = 0
    if device == "cuda":  # this process's cached blocks would count against the children's share
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
    for k in ((1, 2) if args.tiny else (1, 2, 4)):
        cap = memory_share(1 / k, total) if total else 1.0  # as a worker holding 1/k caps itself
        code = SHARING_WORKER.format(root=str(ROOT), k=k, seconds=seconds, tiny=args.tiny,
                                     batch=16 if args.tiny else args.batch_size, cap=cap)
        with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as files:
            errs = [files.enter_context(open(Path(logs) / f"{i}.err", "w+")) for i in range(k)]
            procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=err, text=True)
                     for err in errs]
            try:
                rates = _shared_rates(procs, errs, timeout=60 + 3 * seconds)
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
        out[f"processes_{k}"] = {"images_per_second_total": round(sum(r for r, _ in rates), 1),
                                 "per_process": [round(r, 1) for r, _ in rates]}
        if device == "cuda":
            out[f"processes_{k}"].update(memory_cap_gb=round(cap * total / 2**30, 1),
                                         peak_memory_mb=[round(m, 1) for _, m in rates])
        state["save"](out)
    return out


def _shared_rates(procs: list[subprocess.Popen], errs: list[Any], timeout: float
                  ) -> list[tuple[float, float]]:
    """Wait until every process is warmed up, let them all go, and read their images per
    second and peak memory (MB; NaN on a CPU); a process that fails, or is not ready or done
    within ``timeout`` seconds, fails the stage with its standard error (written to a file, so a
    chatty process never blocks on a full pipe)."""
    deadline = time.monotonic() + timeout

    def failed(i: int, what: str) -> RuntimeError:
        errs[i].seek(0)
        return RuntimeError(f"a sharing process {what}: {errs[i].read()[-800:]}")

    for i, p in enumerate(procs):
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise failed(i, f"was not ready within {timeout:.0f} s")
        if p.stdout.readline().strip() != "ready":
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
            raise failed(i, "failed before its window")
    for i, p in enumerate(procs):
        assert p.stdin is not None
        try:
            p.stdin.write("go\n")
            p.stdin.flush()
        except BrokenPipeError:
            p.wait(timeout=5)
            raise failed(i, "died after warming up") from None
    rates = []
    for i, p in enumerate(procs):
        try:
            stdout, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise failed(i, f"did not finish within {timeout:.0f} s") from None
        if p.returncode != 0:
            raise failed(i, "failed")
        rate, peak = stdout.strip().splitlines()[-1].split()
        rates.append((float(rate), float(peak)))
    return rates


STAGES = {"environment": stage_environment, "epoch": stage_epoch,
          "calibration": stage_calibration, "host_copies": stage_host_copies,
          "trials": stage_trials,
          "witches_brew": stage_witches_brew, "backdoors": stage_backdoors,
          "sharing": stage_sharing, "pilot": stage_pilot}
NEEDS = {"trials": "epoch", "witches_brew": "epoch",  # a stage -> the stage it builds on
         "calibration": "epoch", "host_copies": "epoch"}


def chosen_stages(text: str) -> list[str]:
    """The stages ``--stages`` names, checked before any device time is spent: each known, and
    each after the stage it needs."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise SystemExit(f"--stages: unknown {', '.join(map(repr, unknown)) or 'nothing'} "
                         f"(known: {', '.join(STAGES)})")
    for i, name in enumerate(names):
        need = NEEDS.get(name)
        if need is not None and need not in names[:i]:
            raise SystemExit(f"--stages: {name} uses the model that {need} trains; list {need} "
                             "before it")
    return names


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with its defaults filled in and checked before any device time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CI-sized, on whatever device")
    parser.add_argument("--data", default=os.path.join(os.environ.get(
        "RAYPOISON_DATA_ROOT", "data"), "cifar10-jpeg"), help="the CIFAR-10 JPEG folder")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."),
                                                      "gpu_check.json"))
    parser.add_argument("--scratch", default=None, help="a folder for the check's checkpoint")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device-name", default=None,
                        help="the calibration's device name (default: from the GPU's, e.g. "
                             "nvidia-h200-measured)")
    parser.add_argument("--craft-scale", type=float, default=None,
                        help="share of the protocol's crafting iterations (default 0.1; tiny "
                             "0.01)")
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated, of {', '.join(STAGES)} (default: all but pilot)")
    parser.add_argument("--pilot", action="store_true",
                        help="run the fidelity pilot only (a second call on the lent machine)")
    parser.add_argument("--pilot-trials", type=int, default=50)
    parser.add_argument("--pilot-seconds", type=float, default=330,
                        help="the pilot's time box, counted from the call's start")
    parser.add_argument("--pilot-chunk", type=int, default=None,
                        help="the most pairs run as one batch (default 8; tiny 2)")
    parser.add_argument("--pilot-first-pair-seconds", type=float, default=None,
                        help="the first pair starts only with this much of --pilot-seconds left "
                             "(default 60; tiny 0)")
    parser.add_argument("--deadline-seconds", type=float, default=None,
                        help="no stage starts after this many seconds from the call's start "
                             "(it is recorded as skipped): set it below the device call's limit")
    parser.add_argument("--pilot-epochs", type=int, default=None,
                        help="pre-training epochs of the pilot's ResNet-18 (default 20; tiny 2)")
    args = parser.parse_args(argv)
    # the call's clock, for --deadline-seconds and --pilot-seconds: the process's start when run
    # as a script, this call's when a test calls main() (the module may be imported long before)
    args.start = T0 if __name__ == "__main__" else time.monotonic()
    if args.stages is None:
        args.stages = "environment,pilot" if args.pilot else ",".join(
            name for name in STAGES if name != "pilot")
    args.stage_names = chosen_stages(args.stages)
    if Path(args.out).is_dir():
        raise SystemExit(f"--out: {args.out} is a folder; give the JSON file's name")
    args.pilot_epochs = args.pilot_epochs or (2 if args.tiny else 20)
    if args.pilot_chunk is not None and args.pilot_chunk < 1:
        raise SystemExit(f"--pilot-chunk: at least 1 pair, got {args.pilot_chunk}")
    args.pilot_chunk = args.pilot_chunk or (2 if args.tiny else 8)
    if args.pilot_first_pair_seconds is None:
        args.pilot_first_pair_seconds = 0.0 if args.tiny else 60.0
    args.data = str(Path(args.data).resolve())
    if args.tiny:
        args.pilot_trials = min(args.pilot_trials, 3)
    args.craft_scale = args.craft_scale or (0.01 if args.tiny else 0.1)
    Path(args.out).resolve().parent.mkdir(parents=True, exist_ok=True)
    args.scratch = args.scratch or str(Path(args.out).resolve().parent / "gpu_check_scratch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    stages = args.stage_names
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    state: dict[str, Any] = {}
    failed = 0
    for name in stages:
        tick = time.perf_counter()
        if (args.deadline_seconds is not None
                and time.monotonic() - args.start > args.deadline_seconds):
            report[name] = {"skipped": f"--deadline-seconds {args.deadline_seconds:g} passed"}
            print(f"{name}: skipped (out of time)", flush=True)
            _write_json(args.out, report)
            continue

        def save(partial: dict, name: str = name, tick: float = tick) -> None:
            """Write the report with ``partial`` as the running stage's figures so far."""
            partial = {**partial, "stage_seconds": round(time.perf_counter() - tick, 1),
                       "partial": True}
            state["partial"] = partial
            _write_json(args.out, {**report, name: partial})

        state["save"] = save
        state.pop("partial", None)
        try:
            report[name] = STAGES[name](args, device, state)
        except Exception as err:  # the next stage still runs; the error is a figure too
            failed += 1  # what the stage saved before it failed is kept beside the error
            report[name] = {**state.get("partial", {}), "error": f"{type(err).__name__}: {err}",
                            "traceback": traceback.format_exc()[-2000:]}
        report[name]["stage_seconds"] = round(time.perf_counter() - tick, 1)
        print(f"{name}: {json.dumps(report[name], default=str)[:1500]}", flush=True)
        _write_json(args.out, report)
    print(f"wrote {args.out}; {failed} stages failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


