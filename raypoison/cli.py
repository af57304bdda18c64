"""``raypoison run | report | plan | pretrain | compact | validate | bench``.

Exit codes: 0 done (failed trials are data, counted in the summary), 1 an unexpected error,
2 bad input (config, filters, data, checkpoints; nothing is written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from raypoison.errors import ConfigError, RaypoisonError

if TYPE_CHECKING:
    from raypoison.config.suite import SuiteConfig
    from raypoison.execution.runner import RunOptions

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _csv(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:  # an empty filter would select nothing and compute nothing, silently
        raise argparse.ArgumentTypeError(f"names nothing ({text!r}); name at least one, or "
                                         "leave the option out")
    return names


def _parser() -> argparse.ArgumentParser:
    from raypoison import PROTOCOL_VERSION, __version__

    parser = argparse.ArgumentParser(
        prog="raypoison", description="Data-poisoning and backdoor benchmarks on image "
        "classifiers, run on Ray: run a benchmark config, report its results with intervals, "
        "plan what one will cost.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version",
                        version=f"raypoison {__version__} (protocol version {PROTOCOL_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a benchmark config (resumes into an existing output)")
    run.add_argument("config", help="benchmark YAML file")
    run.add_argument("--output", "-o", required=True,
                     help="output folder or URI; results land in OUTPUT/results/")
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a "
                                       "local Ray instance)")
    run.add_argument("--attacks", type=_csv, help="only these attack labels, comma separated")
    run.add_argument("--scenarios", type=_csv, help="only these scenarios, comma separated")
    run.add_argument("--trials", help="trial indices START:STOP (e.g. 0:20) or one index")
    run.add_argument("--dry-run", action="store_true",
                     help="print each trial the run would compute (its missing defenses, and "
                          "whether saved victims spare its training) and exit; starts nothing")
    run.add_argument("--defenses", type=_csv,
                     help="only these defense labels, comma separated ('none': train and write "
                          "the undefended rows only); with execution.save_victims a later run "
                          "adds the others on the saved victims")
    run.add_argument("--retry-failed", action="store_true",
                     help="also recompute trials whose rows are failed or rejected")
    run.add_argument("--save-poisons", action="store_true",
                     help="export each trial's poisons to OUTPUT/poisons/ in the reference "
                          "trial-folder format (an 'external' attack can evaluate them again)")
    run.add_argument("--workers", type=int, help="number of worker actors (default: config)")
    run.add_argument("--cpus-per-worker", type=float,
                     help="CPUs each worker reserves, and the PyTorch threads it computes with "
                          "(default: config's execution.cpus_per_worker); e.g. --workers 1 "
                          "--cpus-per-worker 2 runs one trial at a time on two cores")
    run.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    run.add_argument("--num-gpus", type=float, help="GPUs of the local Ray instance")
    run.add_argument("--share", action="store_true",
                     help="run beside another live run into the same output instead of refusing "
                          "(both compute the trials neither has written)")
    run.add_argument("--dashboard", action="store_true",
                     help="start Ray's dashboard with the local instance (on 127.0.0.1)")
    run.set_defaults(handler=_run)

    report = sub.add_parser("report", help="success rates with intervals from a results dataset")
    report.add_argument("output", help="the run's output folder or URI")
    report.add_argument("--interval", choices=["wilson", "clopper-pearson"], default="wilson",
                        help="95%% interval of a success rate: Wilson (default) or the exact, "
                             "wider Clopper-Pearson")
    report.add_argument("--per-victim", action="store_true", help="one row per victim")
    report.add_argument("--csv", help="also write the success table as CSV to this file (and "
                                      "the defenses' as <name>-defenses.csv, each repair's "
                                      "cost over all models as <name>-repair-cost.csv)")
    report.add_argument("--markdown", metavar="FILE", help="also write the report as markdown")
    report.add_argument("--html", metavar="FILE",
                        help="also write the report as one self-contained HTML page (its "
                             "figures embedded)")
    report.add_argument("--layout", choices=["auto", "table3", "long"], default="auto",
                        help="success table layout: table3 is a row per attack and a column per "
                             "scenario and role, as in the benchmark's Table 3 (auto: table3 "
                             "when a scenario has the benchmark's name, else a row per cell)")
    report.add_argument("--figures", metavar="DIR",
                        help="draw figures (PNG) into this folder: a forest plot per scenario, "
                             "the --compare differences, success against ε, poison count and "
                             "patch size where they vary, the defenses' trade-off")
    report.add_argument("--compare", nargs=2, metavar=("ATTACK_A", "ATTACK_B"),
                        help="paired difference of two attacks' success rates")
    report.add_argument("--compare-scenarios", nargs=2, metavar=("SCENARIO_A", "SCENARIO_B"),
                        help="paired difference of two scenarios' defenses on the same victims "
                             "(scenarios that differ only in trusted_from)")
    report.add_argument("--against", metavar="URI",
                        help="difference of each cell against another results dataset")
    report.add_argument("--scenarios", metavar="NAME,...",
                        help="only these scenarios' rows (an output may hold several)")
    report.set_defaults(handler=_report)

    pre = sub.add_parser("pretrain", help="train the victim zoo of a zoo config as Ray tasks")
    pre.add_argument("config", help="zoo YAML file")
    pre.add_argument("--output", "-o", required=True, help="folder or URI for the checkpoints")
    pre.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else local)")
    pre.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    pre.add_argument("--num-gpus", type=float, help="GPUs of the local Ray instance")
    pre.set_defaults(handler=_pretrain)

    compact = sub.add_parser("compact", help="rewrite a run's parts into one deduplicated part "
                                             "per partition")
    compact.add_argument("output", help="the run's output folder or URI")
    compact.set_defaults(handler=_compact)

    plan = sub.add_parser("plan", help="what a config will cost: FLOPs per phase and hours on a "
                                       "named device, before anything runs")
    plan.add_argument("config", help="benchmark YAML file")
    plan.add_argument("--device", default="h100",
                      help="a100, h100, h200, or a device of the calibration file (default: h100)")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs the config runs on (default 1)")
    plan.add_argument("--calibration", metavar="FILE",
                      help="measured devices (JSON), e.g. benchmarks/calibration.json")
    plan.add_argument("--calibrate", metavar="NAME",
                      help="time real steps on this machine (one worker, the config's "
                           "cpus_per_worker threads) and save them as device NAME in "
                           "--calibration")
    plan.add_argument("--attacks", type=_csv, help="only these attack labels, comma separated")
    plan.add_argument("--scenarios", type=_csv, help="only these scenarios, comma separated")
    plan.add_argument("--defenses", type=_csv,
                      help="only these defense labels, comma separated ('none': no defense)")
    plan.add_argument("--compute", action="store_true",
                      help="do the arithmetic of the matrix products and convolutions it counts "
                           "(slower; by default their outputs are noise of the right shape, "
                           "which counts the same)")
    plan.set_defaults(handler=_plan)

    validate = sub.add_parser("validate", help="check a config and count its trials")
    validate.add_argument("config", help="benchmark YAML file")
    validate.set_defaults(handler=_validate)

    bench = sub.add_parser("bench", help="print performance figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    sched = bench_sub.add_parser("scheduler", help="scheduler overhead on trivial trials")
    sched.add_argument("--trials", type=int, default=10_000)
    sched.add_argument("--workers", type=int, default=16)
    sched.add_argument("--gpus", type=float, default=4, help="logical GPUs of the local instance")
    sched.add_argument("--output", help="where to write the rows (default: a temporary folder)")
    sched.set_defaults(handler=_bench_scheduler)
    craft = bench_sub.add_parser("crafting", help="seconds to craft one trial, per attack")
    craft.add_argument("config", help="benchmark YAML; its first scenario is used")
    craft.add_argument("--trials", type=int, default=3)
    craft.add_argument("--attacks", type=_csv, help="attack labels (default: all that craft)")
    craft.add_argument("--models", help="a run's models/ folder with pre-trained checkpoints")
    craft.set_defaults(handler=_bench_crafting)
    return parser


def _run(args: argparse.Namespace) -> int:
    from raypoison.config.specs import check_trial_selection, parse_trial_range
    from raypoison.config.suite import load_suite
    from raypoison.execution.runner import RunOptions, run_suite

    suite = load_suite(args.config)
    if "://" not in args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise ConfigError("--output", f"{args.output} is a file, not a folder")
    for flag, value in (("--workers", args.workers), ("--num-cpus", args.num_cpus)):
        if value is not None:
            _at_least_one(flag, value)
    for flag, value in (("--num-gpus", args.num_gpus), ("--cpus-per-worker", args.cpus_per_worker)):
        if value is not None and not value >= 0:
            raise ConfigError(flag, f"must be ≥ 0, got {value}")
    trials = parse_trial_range(args.trials)
    check_trial_selection(suite, trials, args.scenarios)
    options = RunOptions(
        output=args.output, address=args.address, attacks=args.attacks,
        scenarios=args.scenarios, trials=trials, defenses=args.defenses,
        retry_failed=args.retry_failed, save_poisons=args.save_poisons, workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus, dashboard=args.dashboard, config_path=str(Path(args.config)),
        share=args.share,
    )
    if args.dry_run:
        return _dry_run(suite, options)
    summary = run_suite(suite, options, Path(args.config).read_text())
    print(f"run {summary.run_id} {summary.status}: {summary.planned} trials planned, "
          f"{summary.skipped} already done, {summary.computed} computed "
          f"({summary.failed} with failures), {summary.rows_written} rows in "
          f"{summary.files_written} files, {summary.seconds:.1f} s")
    manifest = summary.manifest
    if "://" not in args.output and not os.path.isabs(args.output) and os.path.isabs(manifest):
        manifest = os.path.relpath(manifest)  # as the output was given, like the results path
    print(f"results: {args.output.rstrip('/')}/results   manifest: {manifest}")
    if summary.errors:  # failed trials are data, but a reader must not miss them
        rows = sum(n for n, _ in summary.errors)
        print(f"{rows} rows failed or were rejected; the most common reasons:", file=sys.stderr)
        for n, error in summary.errors[:3]:
            print(f"  {n} x {error}", file=sys.stderr)
    return EXIT_OK


def _check_against(df, other, here: str, there: str) -> None:
    """``--against`` compares cells of the scenarios both datasets hold: refuse none in common,
    and warn where a shared scenario's rows come from different protocol versions."""
    shared = sorted(set(df["scenario"]) & set(other["scenario"]))
    if not shared:
        raise ConfigError("--against", f"no scenario in common: {here} has "
                                       f"{', '.join(sorted(set(df['scenario'])))}; {there} has "
                                       f"{', '.join(sorted(set(other['scenario'])))}")
    if "protocol_version" not in df.columns or "protocol_version" not in other.columns:
        return
    for name in shared:
        mine = sorted(set(df.loc[df["scenario"] == name, "protocol_version"].astype(str)))
        theirs = sorted(set(other.loc[other["scenario"] == name, "protocol_version"].astype(str)))
        if mine != theirs:
            print(f"warning: --against: scenario {name} is protocol version {', '.join(mine)} "
                  f"here and {', '.join(theirs)} in {there}; a protocol change changes results, "
                  "so the differences mix the two (README, Status)", file=sys.stderr)


def _dry_run(suite: SuiteConfig, options: RunOptions) -> int:
    """``raypoison run --dry-run``: each pending trial with its missing defenses and how it will
    be computed; no Ray, no lease, nothing written."""
    from raypoison.core.identity import NO_DEFENSE
    from raypoison.execution.runner import estimate_time_left, pending_trial, pending_work

    planned, pending = pending_work(suite, options)
    for spec, work in pending:
        defenses = ", ".join(d.label for d in spec.defenses) or NO_DEFENSE
        _emit(f"{spec.scenario.name} trial {spec.index} {spec.attack.label} "
              f"[{spec.trial_id}]: {work}; defenses: {defenses}")
    _emit(f"dry run: {planned} trials planned, {planned - len(pending)} already in "
          f"{options.output}, {len(pending)} to compute")
    left = estimate_time_left(suite, options,
                              [pending_trial(spec, work) for spec, work in pending])
    _emit(left.text(options.workers or suite.execution.workers))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    import tempfile

    from raypoison.analysis.document import assemble, to_html, to_markdown
    from raypoison.analysis.report import current_protocol
    from raypoison.analysis.row_checks import split_malformed
    from raypoison.store import results

    for flag, target in (("--csv", args.csv), ("--markdown", args.markdown),
                         ("--html", args.html)):
        if target and not Path(target).resolve().parent.is_dir():
            raise ConfigError(flag, f"no folder {Path(target).resolve().parent} to write "
                                    f"{Path(target).name} into")
        if target and Path(target).is_dir():
            raise ConfigError(flag, f"{target} is a folder; give a file name")
    if args.figures and Path(args.figures).exists() and not Path(args.figures).is_dir():
        raise ConfigError("--figures", f"{args.figures} is a file; give a folder")
    for flag, pair in (("--compare", args.compare), ("--compare-scenarios",
                                                     args.compare_scenarios)):
        if pair and pair[0] == pair[1]:
            raise ConfigError(flag, f"compares {pair[0]!r} with itself; name two different ones")
    _check_output("report", args.output)
    if args.against:
        _check_output("--against", args.against)
    df = results.load(args.output)
    if df.empty:
        print(f"error: no results in {args.output} (no readable part files under its results/)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    df, malformed = split_malformed(df)
    for reason, rows in malformed.itertuples(index=False):
        print(f"warning: left out {rows} rows of {args.output} that no run writes ({reason})",
              file=sys.stderr)
    if df.empty:
        print(f"error: no well-formed rows in {args.output}", file=sys.stderr)
        return EXIT_BAD_INPUT
    every_row = df
    if args.scenarios:
        df = _only_scenarios(df, args.scenarios, args.output)
    df, left_out = current_protocol(df)
    against = None
    if args.against:
        other = results.load(args.against)
        if other.empty:
            raise ConfigError("--against", f"no results in {args.against}")
        other, _ = current_protocol(split_malformed(other)[0])
        _check_against(df, other, args.output, args.against)
        against = (args.against, other)
    for label in args.compare or ():
        if label not in set(df["attack"]):
            known = ", ".join(sorted(set(df["attack"])))
            raise ConfigError("--compare", f"no attack {label!r} in {args.output} (attacks: "
                              f"{known})")
    with_defenses = set(df.loc[(df["status"] == "ok") & df["defense"].notna()
                               & (df["defense"] != "none"), "scenario"]) if "defense" in df else set()
    for name in args.compare_scenarios or ():
        if name not in with_defenses:
            raise ConfigError("--compare-scenarios", f"no defended rows of scenario {name!r} in "
                              f"{args.output} (scenarios with defenses: "
                              f"{', '.join(sorted(with_defenses)) or 'none'})")
    sections = assemble(df, results.run_output(args.output), interval=args.interval,
                        per_victim=args.per_victim,
                        compare_attacks=tuple(args.compare) if args.compare else None,
                        against=against, layout=args.layout,
                        compare_scenarios=(tuple(args.compare_scenarios)
                                           if args.compare_scenarios else None),
                        left_out=left_out, every_row=every_row)
    text = to_markdown(sections)
    _emit(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.csv:
        sections[0].table.to_csv(args.csv, index=False)
        written = [args.csv]
        defended = next((s for s in sections if s.title == "Defenses"), None)
        if defended is not None:
            path = Path(args.csv)
            for key, table in {"defenses": defended.table, **defended.extra}.items():
                if not table.empty:
                    written.append(str(path.with_name(f"{path.stem}-{key}{path.suffix}")))
                    table.to_csv(written[-1], index=False)
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    if not (args.figures or args.html):
        return EXIT_OK
    with tempfile.TemporaryDirectory() as scratch:  # figures for the page alone, if no --figures
        figures = _figures(df, sections, args, Path(args.figures or scratch))
        if args.figures:
            for path in figures:
                print(f"figure: {path}")
        if args.html:
            Path(args.html).write_text(to_html(sections, f"raypoison report: {args.output}",
                                               figures))
            print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK


def _check_output(flag: str, uri: str) -> None:
    """A local results location that does not exist or is a file is refused as such (not as a
    folder with no results)."""
    if "://" in uri:
        return
    if not Path(uri).exists():
        raise ConfigError(flag, f"{uri} does not exist; give a run's output folder (the "
                                "--output of raypoison run)")
    if not Path(uri).is_dir():
        raise ConfigError(flag, f"{uri} is a file; give a run's output folder (the --output "
                                "of raypoison run)")


def _emit(text: str) -> None:
    """Print ``text``; a reader that closes the pipe early (``| head``) ends the printing only,
    not the command, which still writes the files it was asked for and exits as it would."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # the rest of stdout goes to the null device: later prints and the interpreter's last
        # flush must not meet the closed pipe
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _only_scenarios(df, names: str, output: str):
    """``df``'s rows of the comma-separated scenario ``names``; each must have rows."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = sorted(set(df["scenario"].astype(str)))
    for name in wanted:
        if name not in known:
            raise ConfigError("--scenarios", f"no scenario {name!r} in {output} (scenarios: "
                              f"{', '.join(known)})")
    if not wanted:
        raise ConfigError("--scenarios", "name at least one scenario")
    return df[df["scenario"].astype(str).isin(wanted)]


def _figures(df, sections: list, args: argparse.Namespace, folder: Path) -> list[Path]:
    from raypoison.analysis.figures import compare_figure, forest_figures, sweep_figures, tradeoff_figures

    by_title = {s.title: s.table for s in sections}
    figures = forest_figures(sections[0].table, folder, args.interval)
    if args.compare:
        diff = next(s.table for s in sections if s.title.endswith("paired by trial"))
        first, second = args.compare
        figures += compare_figure(diff, first, second, folder)
    figures += sweep_figures(df, folder, args.interval)
    if "Defenses" in by_title:
        figures += tradeoff_figures(by_title["Defenses"], folder)
    return figures


def _pretrain(args: argparse.Namespace) -> int:
    from raypoison.config.suite import load_zoo
    from raypoison.execution.zoo import pretrain_zoo

    entries = pretrain_zoo(load_zoo(args.config), args.output, address=args.address,
                           num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    for e in entries:
        robust = e.get("robust_accuracy")
        print(f"{e['name']} seed {e['seed']} ({e['arch']}): clean accuracy "
              f"{e['clean_accuracy']:.3f}" + (f", robust {robust:.3f}" if robust is not None
                                              else ""))
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    from raypoison.config.suite import load_suite
    from raypoison.execution import cost, device_rates, plan_text

    if args.gpus < 1:
        raise ConfigError("--gpus", f"must be at least 1, got {args.gpus}")
    if args.calibrate and not args.calibration:
        raise ConfigError("--calibrate", "needs --calibration FILE to write to")
    if args.calibration:  # a bad file is refused before anything is measured
        device_rates.calibration_file(Path(args.calibration))
    suite = load_suite(args.config)
    plans = cost.plan_suite(suite, attacks=args.attacks, scenarios=args.scenarios,
                            defenses=args.defenses, compute=args.compute)
    if args.calibrate:
        # on the first planned scenario's attacker and data shape (its data already read)
        scenario = next(s for s in suite.scenarios if s.name == plans[0].name)
        threads = max(1, int(suite.execution.cpus_per_worker))
        device = device_rates.calibrate(scenario.models[scenario.attackers[0]], plans[0].shape, threads)
        device_rates.write_calibration(args.calibration, args.calibrate, device)
        print(f"{args.calibrate}: {device.float32 / 1e9:.3g} GFLOP/s, "
              f"{device.seconds_per_step * 1e3:.3g} ms per step -> {args.calibration}")
    known = device_rates.load_devices(args.calibration)
    name = args.calibrate or args.device
    if name not in known:
        raise ConfigError("--device", f"unknown device {name!r} (known: {', '.join(known)})")
    _emit(plan_text.render(plans, name, known[name], gpus=args.gpus,
                           gpus_per_worker=suite.execution.gpus_per_worker,
                           cpu_workers=suite.execution.workers))
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from raypoison.config.specs import count
    from raypoison.config.suite import load_suite

    suite = load_suite(args.config)
    for scenario in suite.scenarios:
        print(f"scenario {scenario.name}: {scenario.trials} trials x {len(suite.attacks)} attacks"
              f" x {len(scenario.victims)} victims")
    print(f"{suite.name}: valid, {count(suite)} trials")
    return EXIT_OK


def _compact(args: argparse.Namespace) -> int:
    from raypoison.store.compact import compact

    done = compact(args.output)
    if done.partitions:
        print(f"compacted {done.partitions} partitions: {done.files_before} files -> "
              f"{done.files_after}, {done.rows_before} rows -> {done.rows_after}"
              + (f"; {done.already_compact} already one part each" if done.already_compact
                 else ""))
    elif done.already_compact:
        print(f"nothing to compact: each of the {done.already_compact} partitions is already "
              "one part")
    else:
        print("nothing to compact: no part this version can rewrite")
    if done.left_newer:
        print(f"left {len(done.left_newer)} part(s) of a newer raypoison as they are (compact "
              f"with that version): {', '.join(done.left_newer[:5])}")
    return EXIT_OK


def _at_least_one(flag: str, value: float) -> None:
    if value < 1:
        raise ConfigError(flag, f"must be at least 1, got {value}")


def _bench_crafting(args: argparse.Namespace) -> int:
    from raypoison.bench import crafting_seconds

    _at_least_one("--trials", args.trials)
    if args.models and not Path(args.models).is_dir():
        raise ConfigError("--models", f"no folder {args.models} (a run's models/ folder)")
    crafting_seconds(args.config, trials=args.trials, attacks=args.attacks,
                     models_dir=args.models)
    return EXIT_OK


def _bench_scheduler(args: argparse.Namespace) -> int:
    from raypoison.bench import scheduler_overhead

    _at_least_one("--trials", args.trials)
    _at_least_one("--workers", args.workers)
    if args.gpus < 0:
        raise ConfigError("--gpus", f"must be ≥ 0, got {args.gpus}")
    scheduler_overhead(trials=args.trials, workers=args.workers, gpus=args.gpus,
                       output=args.output)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """The command line: each sub-command's parser names its handler (``set_defaults``)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    def terminate(signum, frame):  # a polite kill flushes what is done, like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RaypoisonError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished trials are saved; run the same command to resume"
              if args.command == "run" else "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
