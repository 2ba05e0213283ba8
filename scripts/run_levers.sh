#!/usr/bin/env bash
# Issue 27, step 1: the lever runs of train/recipes/levers/, one after another, each resumable.
#
#   nohup scripts/run_levers.sh > /work/runs/levers/queue.log 2>&1 &
#   python scripts/lever_table.py /work/runs/levers          # the table, at any time
#
# "v6" validates the shipped weights as they are (0 iterations), the reference row. A run that
# finished has a .done file and is skipped; one that stopped part-way (machine lost, session
# over) continues from its last checkpoint with --resume. Environment: RUNS (run folders, outside
# the repository), CACHE (the preprocessing cache), THREADS (torch threads; default: every core),
# LEVERS (which, in order).
set -u
cd "$(dirname "$0")/.." || exit 1
RUNS=${RUNS:-/work/runs/levers}
CACHE=${CACHE:-/work/cache/train}
LEVERS=${LEVERS:-v6 baseline mirror rare deep context}
mkdir -p "$RUNS"
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS
for lever in $LEVERS; do
  out="$RUNS/$lever"
  [ -f "$out/.done" ] && { echo "$(date -u +%FT%TZ) $lever: done before, skipped"; continue; }
  recipe="train/recipes/levers/$lever.toml"
  extra=()
  if [ "$lever" = v6 ]; then recipe=train/recipes/levers/baseline.toml; extra=(--iterations 0); fi
  if [ -f "$out/state.safetensors" ]; then extra+=(--resume); fi
  echo "$(date -u +%FT%TZ) $lever: start (${extra[*]:-new run})"
  if hermes train -c "$recipe" -o "$out" --set "train.cache_dir=\"$CACHE\"" --no-progress \
      "${extra[@]}"; then
    touch "$out/.done"
    echo "$(date -u +%FT%TZ) $lever: finished"
  else
    echo "$(date -u +%FT%TZ) $lever: failed (exit $?); the next lever starts"
  fi
done
