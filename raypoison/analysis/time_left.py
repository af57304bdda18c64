"""How long what is left of a run will take, from the seconds its own rows recorded.

A long run lands over several sessions and machines; ``raypoison run --dry-run`` lists what is
left and, with this module, what it will cost. The estimate is empirical, not modelled: each
pending phase costs the median of the same phase in this output's finished trials of the same
scenario:

- **training** (crafting, checking, training and evaluating the victims, for a trial that has to
  craft and train): the trial's ``seconds_setup + seconds_craft + seconds_check`` plus its
  victims' ``seconds_train + seconds_eval``, taken from trials of the same attack label, else of
  the same attack (another poison count of a sweep), else left unestimated;
- **a defense** (for every defense a trial still lacks): the sum over the trial's victims of that
  defense label's ``seconds_defense``.

Where the rows say how many CPUs each of their run's workers had (a ``cpus_per_worker`` column,
joined from the runs' manifests by :func:`with_cpus_per_worker`) and the caller names the
pending run's, each phase is taken from rows measured at that many CPUs a worker first, and
from all rows only where none are: a trial on two threads runs each phase about twice as fast as
one on one thread beside another (``benchmarks/README.md``), so mixing them would halve or
double the estimate. The figures are otherwise those of the machines and the contention that
wrote the rows; worker start-up (decoding, loading models) is not in them. ``raypoison plan``
estimates a config that has no rows yet from FLOPs instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from raypoison.core.identity import NO_DEFENSE

_TRIAL_PHASES = ("seconds_setup", "seconds_craft", "seconds_check")
_VICTIM_PHASES = ("seconds_train", "seconds_eval")
# the row columns the estimate reads (a reader of the whole dataset need load no others)
COLUMNS = ("scenario", "attack", "attack_name", "trial", "run_id", *_TRIAL_PHASES,
           *_VICTIM_PHASES, "seconds_defense")
CPUS = "cpus_per_worker"  # the column :func:`with_cpus_per_worker` adds


@dataclass(frozen=True)
class PendingTrial:
    """What one pending trial still has to compute (plain values, so the layers above can hand
    it over without this module knowing their types)."""

    scenario: str
    attack: str  # the attack's label (e.g. badnets-poisons50)
    attack_name: str  # the registered attack (e.g. badnets)
    trains: bool  # crafts and trains its victims (no saved victims to start from)
    defenses: tuple[str, ...]  # labels of the defenses it lacks


@dataclass
class TimeLeft:
    seconds: float = 0.0  # the estimated phases, summed
    trials: int = 0  # pending trials
    estimated: int = 0  # of them, those whose every phase has a measured analogue
    unmeasured: Counter[str] = field(default_factory=Counter)  # phase → pending trials lacking one
    measured: bool = False  # whether the output has any finished trial to measure by
    longest: float = 0.0  # the longest pending trial's estimated phases
    cpus_per_worker: float | None = None  # the pending run's, where the caller named it
    phases: int = 0  # estimated phases
    at_same_cpus: int = 0  # of them, those measured at the pending run's CPUs a worker

    def wall(self, workers: int) -> float:
        """The seconds ``workers`` take for the estimated phases: the work shared among no more
        workers than there are trials, and never less than the longest trial."""
        return max(self.seconds / max(1, min(workers, self.trials)), self.longest)

    def text(self, workers: int) -> str:
        """The lines ``--dry-run`` prints."""
        if not self.trials:
            return "time left: nothing"
        if not self.measured:
            return ("time left: no finished trial in this output to measure it by yet "
                    "(`raypoison plan` estimates from FLOPs)")
        if not self.estimated and not self.seconds:
            lines = ["time left: not estimated, no finished trial in this output measures the "
                     "phases below"]
        else:
            scope = ("" if self.estimated == self.trials else
                     f"; not counting the unmeasured phases below, which "
                     f"{self.trials - self.estimated} of the {self.trials} trials need")
            per = (f", about {duration(self.wall(workers))} with {workers} workers"
                   if workers > 1 and self.trials > 1 else "")
            cpus = ("" if self.cpus_per_worker is None else
                    f"; {self.at_same_cpus} of its {self.phases} phases measured at "
                    f"{self.cpus_per_worker:g} CPU{'' if self.cpus_per_worker == 1 else 's'} a "
                    f"worker, as this run has them")
            lines = [f"time left: about {duration(self.seconds)} of trial computation{per} (the "
                     f"median of each phase in this output's finished trials, as fast as the "
                     f"machines and the load that wrote them{cpus}; worker start-up not "
                     f"included){scope}"]
        lines += [f"  no measured {phase}: {n} trial{'s' if n > 1 else ''}"
                  for phase, n in sorted(self.unmeasured.items())]
        return "\n".join(lines)


def duration(seconds: float) -> str:
    """``seconds`` as a reader wants it: 45 s, 12 min, 3.4 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or "status" not in df.columns:
        return df.iloc[0:0]
    ok = df[df["status"] == "ok"]
    if "defense" not in ok.columns:  # schema-1 parts: undefended rows only
        return ok.assign(defense=NO_DEFENSE)
    return ok.assign(defense=ok["defense"].fillna(NO_DEFENSE).astype(str))


def training_seconds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial with its scenario, attack, attack name and the seconds it took
    to craft and train (see the module's docstring)."""
    ok = _ok(df)
    undefended = ok if ok.empty else ok[ok["defense"] == NO_DEFENSE]
    if undefended.empty:
        return pd.DataFrame(columns=["scenario", "attack", "attack_name", "seconds", CPUS])
    keys = ["trial_id", "scenario", "attack", "attack_name"]
    undefended = undefended.assign(**{k: undefended[k].astype(str) for k in keys})
    grouped = undefended.groupby(keys, observed=True)
    per_trial = grouped[list(_TRIAL_PHASES)].first().fillna(0).sum(axis=1)
    per_victims = grouped[list(_VICTIM_PHASES)].sum(min_count=1).fillna(0).sum(axis=1)
    out = (per_trial + per_victims).rename("seconds").reset_index()
    return _with_cpus(out, grouped, undefended)


def defense_seconds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial and defense label with the seconds the defense took over the
    trial's victims."""
    ok = _ok(df)
    defended = ok[(ok["defense"] != NO_DEFENSE) & ok["seconds_defense"].notna()] \
        if not ok.empty and "seconds_defense" in ok.columns else ok.iloc[0:0]
    if defended.empty:
        return pd.DataFrame(columns=["scenario", "defense", "seconds", CPUS])
    keys = ["trial_id", "scenario", "defense"]
    defended = defended.assign(**{k: defended[k].astype(str) for k in keys})
    grouped = defended.groupby(keys, observed=True)
    return _with_cpus(grouped["seconds_defense"].sum().rename("seconds").reset_index(),
                      grouped, defended)


def _with_cpus(out: pd.DataFrame, grouped, rows: pd.DataFrame) -> pd.DataFrame:
    """``out`` (one row per group of ``grouped``, in its order) with the group's CPUs a worker,
    where ``rows`` carry them."""
    if CPUS not in rows.columns:
        return out
    return out.assign(**{CPUS: grouped[CPUS].first().to_numpy(dtype=float)})


def with_cpus_per_worker(df: pd.DataFrame, manifests: Iterable[dict]) -> pd.DataFrame:
    """``df`` with a ``cpus_per_worker`` column: each row's run's ``ray.cpus_per_worker`` from
    the output's run manifests (:func:`raypoison.analysis.run_status.manifests`), missing where
    the row has no run id or its run's manifest does not say."""
    cpus: dict[str, float] = {}
    for m in manifests:
        ray_record = m.get("ray")
        value = ray_record.get(CPUS) if isinstance(ray_record, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and m.get("run_id"):
            cpus[str(m["run_id"])] = float(value)
    if df.empty or "run_id" not in df.columns:
        return df.assign(**{CPUS: pd.Series(dtype=float, index=df.index)})
    return df.assign(**{CPUS: df["run_id"].astype(str).map(cpus).astype(float)})


def _medians(trained: pd.DataFrame, defended: pd.DataFrame) -> tuple[dict, dict, dict]:
    return (trained.groupby(["scenario", "attack"])["seconds"].median().to_dict(),
            trained.groupby(["scenario", "attack_name"])["seconds"].median().to_dict(),
            defended.groupby(["scenario", "defense"])["seconds"].median().to_dict())


def time_left(df: pd.DataFrame, pending: Iterable[PendingTrial],
              cpus_per_worker: float | None = None) -> TimeLeft:
    """The estimate for ``pending`` from ``df``, an output's rows (:mod:`raypoison.store.results`
    ``load``), preferring rows measured at ``cpus_per_worker`` where ``df`` has the column
    (:func:`with_cpus_per_worker`; see the module's docstring)."""
    trained, defended = training_seconds(df), defense_seconds(df)
    every = _medians(trained, defended)  # by attack label, by attack name, by defense label
    same: tuple[dict, dict, dict] = ({}, {}, {})  # the same, at this run's CPUs a worker
    if cpus_per_worker is not None and CPUS in df.columns:
        same = _medians(trained[trained[CPUS] == cpus_per_worker],
                        defended[defended[CPUS] == cpus_per_worker])
    out = TimeLeft(measured=not trained.empty or not defended.empty,
                   cpus_per_worker=cpus_per_worker if CPUS in df.columns else None)

    def measure(*lookups: tuple[int, tuple[str, str]]) -> float | None:
        """The first median found of ``lookups`` (table index, key), at this run's CPUs a worker
        before over all rows."""
        for tables in (same, every):
            for index, key in lookups:
                if key in tables[index]:
                    out.phases += 1
                    out.at_same_cpus += tables is same
                    return float(tables[index][key])
        return None

    for p in pending:
        out.trials += 1
        missing: list[str] = []
        trial = 0.0
        if p.trains:
            seconds = measure((0, (p.scenario, p.attack)), (1, (p.scenario, p.attack_name)))
            if seconds is None:
                missing.append(f"training of {p.attack} in {p.scenario}")
            else:
                trial += seconds
        for defense in p.defenses:
            seconds = measure((2, (p.scenario, defense)))
            if seconds is None:
                missing.append(f"{defense} in {p.scenario}")
            else:
                trial += seconds
        out.seconds += trial
        out.longest = max(out.longest, trial)
        out.unmeasured.update(missing)
        out.estimated += not missing
    return out
