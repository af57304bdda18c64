"""Scheduler overhead on trivial trials; prints figures. Same as ``raypoison bench scheduler``.

    python benchmarks/scheduler_overhead.py --trials 10000 --workers 16 --gpus 4
"""

import sys

from raypoison.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "scheduler", *sys.argv[1:]]))
