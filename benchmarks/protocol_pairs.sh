#!/bin/bash
# Issue 16: pair attacks across protocol versions on the CPU miniature, a block of trials at a
# time, protocol 2 then protocol 1, so finished pairs accumulate. Resumable: run it again and each
# run skips the trials its output holds. Run it alone on the machine.
#
#   git worktree add /tmp/old 7ab3e86        # protocol 1, the last commit before the change
#   git worktree add /tmp/new 046d153        # protocol 2 (its trial ids equal main's)
#   RAYPOISON_DATA_ROOT=../shared/data benchmarks/protocol_pairs.sh /tmp/old /tmp/new \
#       benchmarks/results/jpeg-protocol1 benchmarks/results/jpeg-protocol2
#   .venv/bin/python benchmarks/protocol_compare.py benchmarks/results/jpeg-protocol1 \
#       benchmarks/results/jpeg-protocol2 --markdown
#
# Environment: STEPS (the blocks' ends, default 25 50 75 100), START (the first trial, default 0),
# SCENARIO (default the lr-0.1 augmented scenario), ATTACKS (default
# bullseye_polytope,convex_polytope), ORDER ("new old", the default, or "old new"). The
# no-augmentation study, for example:
#   STEPS=50 SCENARIO=cifar10-jpeg-resnet-transfer-head-lr0.1-noaug ATTACKS=none,feature_collision ...
#
# The outputs cache the pre-trained extractor under models/ (not committed; a new machine
# pre-trains it once, about 13 minutes). Pairs are pairs only on one extractor, and another
# machine's pre-training need not give the same weights to the bit: a session on a new machine
# starts a fresh pair of outputs (its own folder under benchmarks/results/, the outputs' models/
# both holding the one it pre-trained) at the first trial that is not yet a pair (START), and
# protocol_compare.py joins them with --also. A block both versions have not finished before the
# machine goes is lost as pairs, so keep the blocks short enough to finish in a session.
set -euo pipefail
OLD_TREE=$(realpath "$1"); NEW_TREE=$(realpath "$2"); OLD_OUT=$(realpath "$3"); NEW_OUT=$(realpath "$4")
PY=$(realpath -s "${PYTHON:-.venv/bin/python}")  # -s: keep the venv link
SCENARIO=${SCENARIO:-cifar10-jpeg-resnet-transfer-head-lr0.1}
ATTACKS=${ATTACKS:-bullseye_polytope,convex_polytope}
# Pairs are pairs only on one extractor: refuse two outputs whose cached models differ (a new
# machine pre-trains again; benchmarks/README.md gives the digest every committed pair used).
digests() { { sha256sum "$1"/models/*.pt 2>/dev/null || true; } | cut -d' ' -f1 | sort -u | tr '\n' ' '; }
OLD_SUM=$(digests "$OLD_OUT"); NEW_SUM=$(digests "$NEW_OUT")
if [ -n "$OLD_SUM" ] && [ -n "$NEW_SUM" ] && [ "$OLD_SUM" != "$NEW_SUM" ]; then
  echo "error: $OLD_OUT/models and $NEW_OUT/models hold different extractors" \
       "(${OLD_SUM}vs $NEW_SUM): their trials would not pair" >&2
  exit 2
fi
echo "extractor sha256: old ${OLD_SUM}new $NEW_SUM"
run() {  # run TREE OUTPUT TRIALS
  (cd "$1" && env PYTHONPATH="$1" RAY_AUTH_MODE=disabled nice -n 19 "$PY" -c \
    "import sys; from raypoison.cli import main; sys.exit(main())" run configs/cifar10-jpeg-cpu.yaml \
    --output "$2" --scenarios "$SCENARIO" --attacks "$ATTACKS" --trials "${START:-0}:$3")
}
for k in ${STEPS:-25 50 75 100}; do
  for version in ${ORDER:-new old}; do
    if [ "$version" = new ]; then run "$NEW_TREE" "$NEW_OUT" "$k"; else run "$OLD_TREE" "$OLD_OUT" "$k"; fi
  done
  echo "pairs through trial $((k - 1)) done ($SCENARIO: $ATTACKS): $(date)"
done
