"""raypoison: a Ray-distributed runner for data-poisoning and backdoor benchmarks.

The walk through the package follows one run:
config -> spec -> execution.scheduler -> execution.worker -> trial -> rows -> execution.sink -> results.
"""

__version__ = "0.1.0"

# Bumped whenever a change alters what a trial computes; it is part of every trial id, so results
# of an older protocol are never mistaken for results of the current one.
PROTOCOL_VERSION = "3"
