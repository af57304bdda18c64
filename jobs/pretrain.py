"""Entry point for ``ray job submit``: ``raypoison pretrain`` joined to the job's cluster.

    ray job submit --working-dir . -- python jobs/pretrain.py configs/zoo-cifar.yaml --output OUTPUT
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package from the working dir

from raypoison.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
