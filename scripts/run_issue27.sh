#!/usr/bin/env bash
# Issue 27, steps 2 and 3, as one resumable queue: every CPU hour goes to the next unfinished
# stage, and each working session only restarts this script.
#
#   nohup scripts/run_issue27.sh > /work/runs/issue27.log 2>&1 &
#
# Stages, in order (docs/recipe-levers.md says why each exists):
#   train-v7              the long run of step 2 (bundled_universal_v7.toml), resumed from its
#                         last checkpoint when it has one
#   val-v7                its exported (EMA) weights on the whole val splits, overlap 0.5, eager:
#                         the ship decision's figures, measured as v6's row of the lever table
#   ship-v7               fp16 export, largest-component choice on val, test evaluation of both
#                         datasets (final figures; nothing is chosen with them)
#   train-openkbp_v7      step 3's separate models, v7's recipe on one dataset each, from scratch,
#   ship-openkbp_v7       each followed by the same export, choice and test evaluation (a model's
#   train-hippocampus_v7  test figures come as soon as it is trained, not after the other's hours)
#   ship-hippocampus_v7
#   compare-step3         universal v7 against the separate models on test, paired per case
#   train-v7s, ship-v7s, train-openkbp_v7s, ship-openkbp_v7s, train-hippocampus_v7s,
#   ship-hippocampus_v7s, compare-step3s
#                         step 3 again at a budget one working session holds (SHORT universal
#                         iterations, default 800; each separate model its dataset's share of
#                         them, 375 and 425), all three from scratch with the same recipes, so a
#                         lost machine costs one session, not ten hours; outputs in
#                         $RUNS/ship-short/ (docs/recipe-levers.md, "Step 3 at a short budget")
#
# Each ship stage also writes the model card it would ship with its test figures, and ship-v7
# compares v7 with v6's committed test reports (docs/eval-final-*-test.json): everything a person
# needs for the decisions lands in $RUNS/ship/.
#
# A finished stage leaves $RUNS/issue27-done/<stage> and is skipped; a training stopped part-way
# (session over, machine lost) continues from its last checkpoint (bit for bit); the other stages
# start again, except that a ship stage keeps the steps it had finished. Environment: RUNS (run
# folders, outside the repository; default /work/runs), CACHE (the preprocessing cache), THREADS
# (torch threads; default every core), STAGES (which, in order). What to do with the results
# (ship or not, the step-3 table) stays with a person.
set -u
cd "$(dirname "$0")/.." || exit 1
RUNS=${RUNS:-/work/runs}
CACHE=${CACHE:-/work/cache/train}
SHORT=${SHORT:-800}
STAGES=${STAGES:-train-v7 val-v7 ship-v7 train-openkbp_v7 ship-openkbp_v7 train-hippocampus_v7 ship-hippocampus_v7 compare-step3}
DONE="$RUNS/issue27-done"
SHIP=$RUNS/ship  # where ship and compare write; the short stages use $RUNS/ship-short
mkdir -p "$DONE" "$RUNS/ship" "$RUNS/ship-short"
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS
OPENKBP=train/datasets/openkbp.toml
HIPPOCAMPUS=train/datasets/hippocampus.toml

say() { echo "$(date -u +%FT%TZ) $*"; }

# train <recipe name> <run folder> [hermes train option...]: a new run, or --resume where a
# checkpoint exists.
train() {
  local extra=("${@:3}")
  [ -f "$2/state.safetensors" ] && extra+=(--resume)
  hermes train -c "train/recipes/$1.toml" -o "$2" --set "train.cache_dir=\"$CACHE\"" \
    --no-progress "${extra[@]}"
}

# share <iterations>: that many of v7's 5 300 iterations' worth of one dataset's patches, scaled
# to the short budget (rounded): share 2485 -> OpenKBP's iterations, share 2815 -> hippocampus'.
share() { echo $(( ($1 * SHORT + 2650) / 5300 )); }

# fresh <output> <input>: the output exists and was written after its input, so a step that a
# session's end cut short is not redone (every writer here is atomic: a file is whole or absent).
fresh() { [ -f "$1" ] && [ "$1" -nt "$2" ]; }

# ship <run folder> <name> <data> <recipe> <dataset card>...: export, choose, evaluate on test.
# Each step is skipped when its output is fresh, so a stopped ship stage goes on where it was.
ship() {
  local run=$1 name=$2 data=$3 recipe=$4 out="$SHIP/$2"
  shift 4
  local chooser=() card
  for card in "$@"; do chooser+=(--dataset "$card"); done
  fresh "$out-export.safetensors" "$run/last.safetensors" \
    || python scripts/export_bundled.py "$run/last.safetensors" --name "$name" --data "$data" \
      --recipe "train/recipes/$recipe.toml" --out "$out-export.safetensors" || return 1
  fresh "$out.safetensors" "$out-export.safetensors" \
    && fresh "$out-largest-component-val.json" "$out-export.safetensors" \
    || python scripts/choose_largest_component.py "$out-export.safetensors" "${chooser[@]}" \
      --split val --json "$out-largest-component-val.json" --out "$out.safetensors" || return 1
  local reports=()
  for card in "$@"; do
    local dataset
    dataset=$(basename "$card" .toml)
    fresh "$out-$dataset-test.csv" "$out.safetensors" \
      || hermes evaluate --weights "$out.safetensors" --dataset "$card" --split test \
        --json "$out-$dataset-test.json" --csv "$out-$dataset-test.csv" || return 1
    reports+=(--eval "$out-$dataset-test.json")
  done
  # The card the package would ship, with these test figures (read, not yet committed).
  hermes weights card "$out.safetensors" "${reports[@]}" -o "$out-card.md"
}

# compare <A label> <A ship name> <B label> <B report prefix> <dataset>...: paired per-case test
# Dice with intervals, A's report $SHIP/<A ship name>-<dataset>-test.json against B's
# <B report prefix><dataset>-test.json; one markdown table per dataset, $SHIP/<A>-vs-<B>-<dataset>.md.
compare() {
  local dataset
  for dataset in "${@:5}"; do
    python scripts/compare_evaluations.py --a "$1=$SHIP/$2-$dataset-test.json" \
      --b "$3=$4$dataset-test.json" --markdown "$SHIP/$1-vs-$3-$dataset.md" || return 1
  done
}

run_stage() {
  case $1 in
    train-v7) train bundled_universal_v7 "$RUNS/v7" ;;
    val-v7)
      rm -rf "$RUNS/v7-val"  # a validation cut short has nothing worth keeping
      hermes train -c train/recipes/bundled_universal_v7.toml -o "$RUNS/v7-val" --iterations 0 \
        --set "train.init_from=\"$RUNS/v7/last.safetensors\"" --set validation.max_cases=0 \
        --set validation.overlap=0.5 --set train.compile=false \
        --set "train.cache_dir=\"$CACHE\"" --no-progress \
        && cp "$RUNS/v7-val/log.jsonl" docs/levers/v7.jsonl \
        && python scripts/lever_table.py docs/levers --baseline v6 ;;
    ship-v7) ship "$RUNS/v7" universal-hermes-r universal bundled_universal_v7 "$OPENKBP" \
      "$HIPPOCAMPUS" \
      && compare v7 universal-hermes-r v6 docs/eval-final- openkbp hippocampus ;;
    train-openkbp_v7) train bundled_openkbp_v7 "$RUNS/openkbp_v7" ;;
    train-hippocampus_v7) train bundled_hippocampus_v7 "$RUNS/hippocampus_v7" ;;
    ship-openkbp_v7) ship "$RUNS/openkbp_v7" openkbp-hermes-r openkbp bundled_openkbp_v7 \
      "$OPENKBP" ;;
    ship-hippocampus_v7) ship "$RUNS/hippocampus_v7" hippocampus-hermes-r hippocampus \
      bundled_hippocampus_v7 "$HIPPOCAMPUS" ;;
    compare-step3)
      compare universal universal-hermes-r separate "$RUNS/ship/openkbp-hermes-r-" openkbp \
        && compare universal universal-hermes-r separate "$RUNS/ship/hippocampus-hermes-r-" \
          hippocampus ;;
    train-v7s) train bundled_universal_v7 "$RUNS/v7s" --iterations "$SHORT" ;;
    train-openkbp_v7s) train bundled_openkbp_v7 "$RUNS/openkbp_v7s" --iterations "$(share 2485)" ;;
    train-hippocampus_v7s) train bundled_hippocampus_v7 "$RUNS/hippocampus_v7s" \
      --iterations "$(share 2815)" ;;
    ship-v7s) SHIP=$RUNS/ship-short ship "$RUNS/v7s" universal-hermes-r universal \
      bundled_universal_v7 "$OPENKBP" "$HIPPOCAMPUS" ;;
    ship-openkbp_v7s) SHIP=$RUNS/ship-short ship "$RUNS/openkbp_v7s" openkbp-hermes-r openkbp \
      bundled_openkbp_v7 "$OPENKBP" ;;
    ship-hippocampus_v7s) SHIP=$RUNS/ship-short ship "$RUNS/hippocampus_v7s" \
      hippocampus-hermes-r hippocampus bundled_hippocampus_v7 "$HIPPOCAMPUS" ;;
    compare-step3s)
      SHIP=$RUNS/ship-short compare universal universal-hermes-r separate \
        "$RUNS/ship-short/openkbp-hermes-r-" openkbp \
        && SHIP=$RUNS/ship-short compare universal universal-hermes-r separate \
          "$RUNS/ship-short/hippocampus-hermes-r-" hippocampus ;;
    *) say "unknown stage $1"; return 2 ;;
  esac
}

for stage in $STAGES; do
  [ -f "$DONE/$stage" ] && { say "$stage: done before, skipped"; continue; }
  say "$stage: start"
  if run_stage "$stage"; then
    touch "$DONE/$stage"
    say "$stage: finished"
  else
    # A later stage may need this one (val-v7 needs train-v7's weights): stop, for a person.
    say "$stage: failed (exit $?); the queue stops here"
    exit 1
  fi
done
