"""The benchmark file and what it expands into: ``suite`` reads and validates a YAML config into
frozen objects (looking names up in the registries of data sets, models, attacks and defenses);
``specs`` expands it into the deterministic stream of trial specs that the scheduler hands out."""
