#!/usr/bin/env bash
# Continue the unseen test on one dataset in the background, the way its recorded runs were made, so that
# the runs of several sessions pair: from a clean worktree at the engine commit of the dataset's first
# recorded run (HEAD when it has none) and with the same torch thread count (2 when it has none).
#
#   bash scripts/unseen_worker.sh DATASET DATASETS_ROOT [OUT]
#
# OUT defaults to meta_dataset/v2/unseen. The worktree is a sibling of the repository (wt-unseen-<commit>);
# the log goes to OUT/logs/worker1.log. Remove the worktree with `git worktree remove` once the runs are in.
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
commit=$(git -C "$repo" rev-parse "$commit")
worktree=$(dirname "$repo")/wt-unseen-${commit:0:7}
[ -d "$worktree" ] || git -C "$repo" worktree add --detach "$worktree" "$commit"
mkdir -p "$out/logs"
echo "=== $(date -u) $dataset from ${commit:0:7} ($worktree), OMP_NUM_THREADS=$threads, nice 19" >> "$out/logs/worker1.log"
cd "$worktree"
OMP_NUM_THREADS=$threads nohup nice -n 19 "$python" -m autodistill.cli meta unseen --datasets "$dataset" \
    --datasets-root "$datasets_root" --out "$out" >> "$out/logs/worker1.log" 2>&1 &
echo "started pid $! on $dataset from ${commit:0:7}; log: $out/logs/worker1.log"
