#!/usr/bin/env bash
# Continue the unseen test on one dataset in the background, the way its recorded runs were made, so that
# the runs of several sessions pair: from a clean worktree at the engine commit of the dataset's first
# recorded run (HEAD when it has none) and with the same torch thread count (2 when it has none).
#
#   bash scripts/unseen_worker.sh DATASET DATASETS_ROOT [OUT]
#
# OUT defaults to meta_dataset/v2/unseen. The worktree is a sibling of the repository (wt-unseen-<commit>);
# the log goes to OUT/logs/DATASET.log. The worker rewrites OUT's report in its commit's format and for its
# dataset only: render it again from HEAD afterwards (meta_dataset/README.md, "Report:"). Remove the worktree
# with `git worktree remove` once the runs are in.
set -euo pipefail
dataset=${1:?usage: unseen_worker.sh DATASET DATASETS_ROOT [OUT]}
datasets_root=$(realpath "${2:?usage: unseen_worker.sh DATASET DATASETS_ROOT [OUT]}")
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
out=$(realpath -m "${3:-$repo/meta_dataset/v2/unseen}")
python=$repo/.venv/bin/python
[ -x "$python" ] || { echo "no $python: run scripts/setup.sh first" >&2; exit 1; }
[ -d "$datasets_root/$dataset" ] || { echo "no dataset $datasets_root/$dataset" >&2; exit 1; }

read -r commit threads < <("$python" - "$out/runs/$dataset.jsonl" <<'EOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
first = json.loads(runs.read_text().splitlines()[0]) if runs.is_file() and runs.stat().st_size else {}
provenance = first.get("provenance") or {}
print((provenance.get("git") or {}).get("commit") or "HEAD", (provenance.get("machine") or {}).get("torch_threads") or 2)
EOF
)
commit=$(git -C "$repo" rev-parse "$commit^{commit}")
# the first commit whose runner checks a dataset's engine and teacher before training: older code would
# train runs that need not pair, unchecked
checked=0cbef1a
git -C "$repo" merge-base --is-ancestor "$checked" "$commit" || {
    echo "$dataset's runs were trained at ${commit:0:7}, older than the runner's engine and teacher checks ($checked): continue it in a new OUT" >&2
    exit 1; }
worktree=$(dirname "$repo")/wt-unseen-${commit:0:7}
[ -d "$worktree" ] || git -C "$repo" worktree add --detach "$worktree" "$commit"
[ "$(git -C "$worktree" rev-parse HEAD)" = "$commit" ] && [ -z "$(git -C "$worktree" status --porcelain --untracked-files=no)" ] || {
    echo "$worktree is not a clean checkout of ${commit:0:7}: remove it (git worktree remove --force $worktree)" >&2
    exit 1; }
log=$out/logs/$dataset.log
mkdir -p "$out/logs"
echo "=== $(date -u) $dataset from ${commit:0:7} ($worktree), OMP_NUM_THREADS=$threads, nice 19" >> "$log"
cd "$worktree"
OMP_NUM_THREADS=$threads nohup nice -n 19 "$python" -m autodistill.cli meta unseen --datasets "$dataset" \
    --datasets-root "$datasets_root" --out "$out" >> "$log" 2>&1 &
echo "started pid $! on $dataset from ${commit:0:7}; log: $log"
