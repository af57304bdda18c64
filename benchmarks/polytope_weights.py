"""Which of Convex Polytope's poisons carry weight, under the reference's refit and under the
20-step refit of protocol 1 (issue 16: why Convex Polytope's paired margin fell).

Convex Polytope writes the target's features as a convex combination of the poisons' features and
refits the coefficients before every step. A poison whose coefficient is 0 gets no gradient and
stays at its base image, so the victim fits it to its label like any clean image. This script
crafts one trial's poisons twice on the same pre-trained extractor:

- protocol 2: the reference's refit (:func:`raypoison.attacks.polytope.refit_coefficients`, to
  relative change 1e-6) and Adam at lr 0.04 on the normalized image;
- protocol-1-like: 20 projected-gradient steps at 1/‖AAᵀ‖₂ from the previous coefficients (the
  refit of commit 7ab3e86) and Adam at ``--old-lr`` on the normalized image (0.2 ≈ 0.04 in
  pixels, protocol 1's step, with the CIFAR-10 std of about 0.2),

and prints the coefficients above 1e-6 at the end and, per poison, the mean absolute pixel change
from its base. It reads the pre-trained models a run cached under ``OUTPUT/models/``:

    cd benchmarks && RAYPOISON_DATA_ROOT=../../shared/data ../.venv/bin/python polytope_weights.py \\
        ../configs/cifar10-jpeg-cpu.yaml /work/runs/new --trials 11 12 --iterations 300
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from transfer_run import cached_context, transfer_scenario

import raypoison.attacks.polytope as polytope
from raypoison.config.specs import expand


def twenty_steps(c: np.ndarray, features: np.ndarray, target: np.ndarray,
                 rng: np.random.Generator, **unused: object) -> tuple[np.ndarray, int]:
    """Protocol 1's refit: 20 projected steps of size 1 / ‖AAᵀ‖₂ (no tolerance)."""
    gram = features @ features.T
    step = 1 / max(float(np.linalg.norm(gram, 2)), 1e-12)
    for _ in range(20):
        c = polytope.project_simplex_np(c - step * (gram @ c - features @ target))
    return c, 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("output", help="a run's output whose models/ holds the extractor")
    parser.add_argument("--scenario", default="cifar10-jpeg-resnet-transfer-head-lr0.1")
    parser.add_argument("--trials", type=int, nargs="+", default=[11, 12])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--old-lr", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite, scenario = transfer_scenario(args.config, args.scenario)
    ctx = cached_context(scenario, args.output)
    reference = polytope.refit_coefficients
    last: dict[str, np.ndarray] = {}

    def recording(rule):  # the refit the attack calls, remembering its last coefficients
        def refit(*a, **k):
            c, steps = rule(*a, **k)
            last["c"] = c
            return c, steps
        return refit

    arms = [("protocol 2", reference, polytope.PolytopeParams().lr),
            ("protocol-1-like", twenty_steps, args.old_lr)]
    for index in args.trials:
        spec = next(s for s in expand(suite) if s.scenario.name == scenario.name
                    and s.attack.name == "convex_polytope" and s.index == index)
        setup = ctx.setup(spec.index)
        bases = ctx.data.train_x[list(setup.base_indices)].float()
        for name, rule, lr in arms:
            polytope.refit_coefficients = recording(rule)
            params = dataclasses.replace(polytope.PolytopeParams(), iterations=args.iterations,
                                         lr=lr)
            result = polytope.ConvexPolytope(params).craft(ctx, setup, 0, spec.index)
            assert result.poisons is not None  # a crafting attack's result holds its poisons
            c = last["c"]
            moved = (result.poisons.images.float() - bases).abs().mean((1, 2, 3))
            print(f"trial {index}, {name} (lr {lr} normalized), {args.iterations} iterations: "
                  f"{int((c > 1e-6).sum())} of {len(c)} coefficients > 1e-6 (largest "
                  f"{c.max():.3f}); poisons moved < 1/255 on average: "
                  f"{int((moved < 1).sum())} of {len(moved)}, median change "
                  f"{moved.median():.2f}/255", flush=True)
        polytope.refit_coefficients = reference


if __name__ == "__main__":
    main()
