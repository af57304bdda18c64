"""Suite expansion: a config becomes a lazy, deterministic stream of trial specs.

A trial is one (scenario, attack, trial index). Its id is a hash of everything that defines what
it computes: the scenario (all but its trial count, so growing a benchmark from 20 to 100 trials
keeps the first 20), the attack with its parameters, the index and the protocol version.
Execution settings are not part of it. Same config => same ids; any change to a parameter =>
new ids. The suite's defenses are not part of it either: a defense's rows are keyed by the trial,
the victim and the defense's own label and parameters, so adding a defense to a finished
benchmark computes that defense's rows and nothing else of the trials already done.

A trial's setup (:mod:`raypoison.data.setups`) never depends on the attack, so attacks are compared
on identical targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from raypoison.config.suite import ScenarioConfig, SuiteConfig
from raypoison.core.identity import NO_DEFENSE, trial_id_maker
from raypoison.core.registry import Component
from raypoison.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class TrialSpec:
    trial_id: str
    suite: str
    scenario: ScenarioConfig
    attack: Component
    index: int
    defenses: tuple[Component, ...] = ()
    # False: the trial's undefended rows are stored already; only ``defenses`` are to be written
    write_undefended: bool = True


def parse_trial_range(text: str | None) -> range | None:
    """``"0:20"`` -> trials 0..19; ``"7"`` -> trial 7; ``":50"`` and ``"10:"`` as in Python."""
    if text is None:
        return None
    try:
        if ":" in text:
            start, stop = text.split(":", 1)
            chosen = range(int(start) if start else 0, int(stop) if stop else 2**62)
        else:
            chosen = range(int(text), int(text) + 1)
    except ValueError:
        raise ConfigError("--trials", f"expected START:STOP or an index, got {text[:40]!r}") from None
    if chosen.start < 0 or chosen.stop <= chosen.start:
        raise ConfigError("--trials", f"{text[:40]!r} selects no trials: give 0 <= START < STOP")
    return chosen


def check_trial_selection(suite: SuiteConfig, trials: range | None,
                          scenarios: Iterable[str] | None = None) -> None:
    """Refuse ``--trials`` that lies past every selected scenario's trials: a run of nothing
    would exit 0 as if it had done what was asked."""
    if trials is None:
        return
    chosen = [s for s in suite.scenarios if scenarios is None or s.name in set(scenarios)]
    most = max((s.trials for s in chosen), default=0)
    if chosen and trials.start >= most:
        raise ConfigError("--trials", f"selects trials from index {trials.start}, but the "
                                      f"scenarios have {most} (indices 0 to {most - 1})")


def expand(
    suite: SuiteConfig,
    *,
    attacks: Iterable[str] | None = None,
    scenarios: Iterable[str] | None = None,
    trials: range | None = None,
    defenses: Iterable[str] | None = None,
) -> Iterator[TrialSpec]:
    """Every trial of the suite, lazily, scenario by scenario, then trial, then attack.

    The order keeps one scenario's trials together (a worker loads its data and models once) and
    an index's attacks side by side (they share a target). ``defenses`` keeps only those defense
    labels of the suite in each trial (``none``, the undefended rows every trial writes, may be
    named and selects nothing more), so that a long trial's defenses can land a few at a time.
    """
    chosen_attacks = select(suite.attacks, attacks, "--attacks", lambda a: a.label)
    chosen_defenses = tuple(suite.defenses) if defenses is None else tuple(select(
        suite.defenses, [d for d in defenses if d != NO_DEFENSE], "--defenses",
        lambda d: d.label))
    chosen_scenarios = select(suite.scenarios, scenarios, "--scenarios", lambda s: s.name)
    for scenario in chosen_scenarios:
        indices = range(scenario.trials)
        if trials is not None:
            indices = range(max(trials.start, 0), min(trials.stop, scenario.trials))
        makers = [trial_id_maker(scenario, attack) for attack in chosen_attacks]
        for index in indices:
            for attack, make_id in zip(chosen_attacks, makers, strict=True):
                yield TrialSpec(make_id(index), suite.name, scenario, attack, index,
                                chosen_defenses)


def count(suite: SuiteConfig, *, attacks: Iterable[str] | None = None,
          scenarios: Iterable[str] | None = None, trials: range | None = None) -> int:
    """How many trials :func:`expand` yields with these filters, by arithmetic (no walk)."""
    chosen_attacks = select(suite.attacks, attacks, "--attacks", lambda a: a.label)
    chosen_scenarios = select(suite.scenarios, scenarios, "--scenarios", lambda s: s.name)
    total = 0
    for scenario in chosen_scenarios:
        indices = range(scenario.trials)
        if trials is not None:
            indices = range(max(trials.start, 0), min(trials.stop, scenario.trials))
        total += len(indices) * len(chosen_attacks)
    return total


def select(items: Iterable[T], wanted: Iterable[str] | None, option: str,
           key: Callable[[T], str]) -> list[T]:
    """``items`` whose ``key`` is in ``wanted`` (all when None); an unknown name is a
    ``ConfigError`` naming ``option`` and the known names."""
    if wanted is None:
        return list(items)
    wanted = list(wanted)
    known = [key(i) for i in items]
    for w in wanted:
        if w not in known:
            listed = f"known: {', '.join(known)}" if known else \
                f"the config has no {option.lstrip('-')}"
            if option == "--defenses":
                listed += f"; {NO_DEFENSE!r} selects the undefended rows only"
            raise ConfigError(option, f"unknown name {w!r} ({listed})")
    return [i for i in items if key(i) in wanted]
