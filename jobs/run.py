"""Entry point for ``ray job submit``: ``raypoison run`` joined to the job's cluster.

    ray job submit --working-dir . -- python jobs/run.py configs/smoke.yaml --output OUTPUT

Inside a job Ray sets ``RAY_ADDRESS``, so the run joins the cluster instead of starting a local
instance. Submitting the same command again with the same output resumes the run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package from the working dir

from raypoison.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
