#!/bin/bash
# What follows the v2 build (issue 16), in the order v2/preregistration.md fixes: the evaluation (the product's
# plain model), the refit of the committed model with the evaluation's warm-start decision (the OLD PRESET model
# moves to meta_dataset/model_old_preset), then the final test on the 8 datasets the build never saw; the nested
# selection's evaluation, a reference only, runs beside that test. Run from the main tree:
#   nohup nice -n 19 bash meta_dataset/v2/finish.sh > finish.log 2>&1 &
# A step whose output exists is skipped, so a rerun resumes. The unseen runs are resumable and claim their datasets:
# WORKERS single-threaded processes share them (the four small datasets first; their logs in v2/unseen/logs).
# Commit the outputs piece by piece.
# After the refit, tests/test_meta_renamed.py (about the OLD PRESET model's renamed candidates) points at
# meta_dataset/model_old_preset, and the README figures are regenerated from the new reports.
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
ad() { "$PY" -m autodistill.cli "$@"; }
V2=meta_dataset/v2
PORTFOLIO=$(sed -n 's/^PORTFOLIO=//p' "$V2/run_build.sh")
UNSEEN=imdb_small,amazon_review_full_small,mdsd_dvd,mdsd_electronics,mpqa,tweet_eval_hate,tweet_eval_offensive,emotion
DATASETS_ROOT=${DATASETS_ROOT:-../shared/datasets}

missing=$(ad meta status --portfolio "$PORTFOLIO" --json | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["missing"])')
if [ "$missing" != 0 ]; then
  echo "the build still misses $missing runs (autodistill meta status --portfolio ...): finish it first" >&2
  exit 1
fi

[ -f "$V2/evaluation/decision.json" ] || ad meta evaluate --records "$V2/runs" --features "$V2/features" \
  --out "$V2/evaluation" --repeats 3 --note "v2 build, complete: the pre-registered evaluation (v2/preregistration.md)"
if [ ! -d meta_dataset/model_old_preset ]; then
  git mv meta_dataset/model meta_dataset/model_old_preset 2>/dev/null || mv meta_dataset/model meta_dataset/model_old_preset
fi
# the decision is stored after the model: its file says the refit is complete
[ -f meta_dataset/model/warm_start.json ] || ad meta fit --records "$V2/runs" --features "$V2/features" \
  --evaluation "$V2/evaluation" --out meta_dataset/model

# A worker exits 1 when a dataset failed (logged; a rerun retries it) and 2 when it could not run at all
# (e.g. another plan in the manifest): the second stops the script. Logs go with the results.
export OMP_NUM_THREADS=1
mkdir -p "$V2/unseen/logs"
pids=()
for w in $(seq 1 "${WORKERS:-2}"); do
  ad meta unseen --datasets "$UNSEEN" --datasets-root "$DATASETS_ROOT" --out "$V2/unseen" \
    >> "$V2/unseen/logs/worker$w.log" 2>&1 &
  pids+=($!)
  sleep 20   # the first worker writes the manifest
done
# the nested selection, a reference only (never used for a decision), beside the workers; one model seed (about
# an hour here beside the workers; three did not finish in three sessions: v2/preregistration.md, Changes)
[ -f "$V2/evaluation_auto/decision.json" ] || ad meta evaluate --records "$V2/runs" --features "$V2/features" \
  --out "$V2/evaluation_auto" --repeats 1 --meta-model auto \
  --note "v2 build, complete: the nested selection, a reference only (v2/preregistration.md); one model seed (Changes, 2026-12-06)" \
  || echo "the nested selection's evaluation failed (above); the unseen workers go on" >&2
worst=0
for pid in "${pids[@]}"; do
  rc=0; wait "$pid" || rc=$?
  [ "$rc" -le "$worst" ] || worst=$rc
done
if [ "$worst" -ge 2 ]; then
  echo "an unseen worker could not run (exit $worst): see $V2/unseen/logs" >&2
  exit "$worst"
fi
ad meta unseen --datasets "$UNSEEN" --datasets-root "$DATASETS_ROOT" --out "$V2/unseen" --report-only
