"""``raypoison bench``: performance figures printed, never asserted.

``scheduler``: many trivial trials (the ``noop`` attack) on a local Ray instance with logical
GPUs and fractional-GPU workers, to measure what the runner itself costs per trial.
"""

from __future__ import annotations

import io
import resource
import tempfile
import time

import psutil

from raypoison.config.suite import parse_suite


def _suite(trials: int, workers: int):
    return parse_suite({
        "name": "bench-scheduler",
        "scenarios": [{
            "name": "noop",
            "dataset": {"name": "synthetic", "params": {"classes": 10, "image_size": 8,
                                                        "train_per_class": 10,
                                                        "test_per_class": 10}},
            "models": {"net": {"arch": "convnet", "pretrain": {}}},
            "attacker": "net", "victims": ["net"], "budget": 1, "epsilon": "8/255",
            "trials": trials,
        }],
        "attacks": [{"name": "noop"}],
        "execution": {"workers": workers, "cpus_per_worker": 0, "gpus_per_worker": 0.25,
                      "rows_per_file": 5000, "flush_seconds": 30, "progress_seconds": 3600},
    })


def scheduler_overhead(trials: int = 10_000, workers: int = 16, gpus: float = 4,
                       output: str | None = None) -> dict:
    from raypoison.execution.runner import RunOptions, run_suite
    from raypoison.store.results import read_table

    folder = output or tempfile.mkdtemp(prefix="raypoison-bench-")
    rss_start = psutil.Process().memory_info().rss
    cpu_start = time.process_time()
    summary = run_suite(_suite(trials, workers),
                        RunOptions(output=folder, num_cpus=2, num_gpus=gpus,
                                   progress_stream=io.StringIO()))
    driver_cpu = time.process_time() - cpu_start
    stats = summary.scheduler
    steady = stats["run_seconds"] - (stats["first_done_seconds"] or 0)
    rows = read_table(folder, ["trial_id"]).num_rows
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    figures = {
        "trials": summary.computed,
        "rows": rows,
        "result_files": summary.files_written,
        "workers": workers,
        "peak_in_flight": stats["peak_in_flight"],
        "wall_seconds_total": round(summary.seconds, 2),
        "seconds_to_first_trial": round(stats["first_done_seconds"] or 0, 2),
        "steady_trials_per_second": round((summary.computed - 1) / steady, 1) if steady else None,
        "steady_wall_ms_per_trial": round(1000 * steady / max(1, summary.computed - 1), 3),
        "scheduler_loop_ms_per_trial": round(1000 * stats["loop_seconds"] / summary.computed, 3),
        "driver_cpu_ms_per_trial": round(1000 * driver_cpu / summary.computed, 3),
        "driver_rss_mb_before": round(rss_start / 2**20, 1),
        "driver_peak_rss_mb": round(peak_rss / 2**20, 1),
        "output": folder,
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    return figures


def crafting_seconds(config: str, *, trials: int = 3, attacks: list[str] | None = None,
                     models_dir: str | None = None) -> list[dict]:
    """Seconds to craft one trial's poisons, per attack, on this machine's device (no Ray).

    Pre-trained models come from ``models_dir`` (a run's ``models/`` cache) when present there,
    otherwise they are pre-trained here first.
    """

    import torch

    from raypoison.attacks import ATTACKS, create_attack
    from raypoison.config.suite import load_suite
    from raypoison.core.identity import derive_seed
    from raypoison.errors import ConfigError
    from raypoison.execution.checkpoints import local_checkpoint, models_of
    from raypoison.trial.context import TrialContext
    from raypoison.trial.pretrain import pretrain_checkpoint

    suite = load_suite(config)
    scenario = suite.scenarios[0]
    labels = [a.label for a in suite.attacks]
    unknown = sorted(set(attacks or ()) - set(labels))
    if unknown:
        raise ConfigError("--attacks", f"no attack {', '.join(map(repr, unknown))} in {config} "
                                       f"(its attacks: {', '.join(labels)})")
    blobs = {}
    for name in models_of(scenario):
        cfg = scenario.models[name]
        path = local_checkpoint(cfg, scenario, models_dir)
        if path is not None:
            blobs[name] = path.read_bytes()
        else:
            assert cfg.pretrain is not None  # models_of keeps models with weights
            blobs[name] = pretrain_checkpoint(cfg, cfg.pretrain.dataset_for(scenario.dataset))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = TrialContext.create(scenario, blobs, device)
    chosen = [a for a in suite.attacks if ATTACKS.get(a.name).needs_models
              and (attacks is None or a.label in attacks)]
    figures = []
    for component in chosen:
        attack = create_attack(component)
        seconds = []
        for index in range(trials):
            setup = ctx.setup(index)
            start = time.perf_counter()
            attack.craft(ctx, setup, derive_seed(scenario.seed, index, component.label, "craft"),
                         index)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        figures.append({"attack": component.label, "trials": trials, "device": device,
                        "threads": torch.get_num_threads(),
                        "mean_s": round(sum(seconds) / len(seconds), 3),
                        "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3)})
        print("  ".join(f"{k}={v}" for k, v in figures[-1].items()), flush=True)
    return figures
