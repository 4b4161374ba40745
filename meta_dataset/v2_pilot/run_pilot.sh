#!/bin/bash
# pilot of meta-dataset v2 (issue 16), run from worktree /work/pilot at a fixed commit
cd /work/pilot
export PYTHONPATH=/work/pilot AUTODISTILL_CACHE=/work/cache_pilot OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
RULE=$(cat /work/pilot_rule_fresh.min.json)
$PY -c "from autodistill.cli import main; main()" meta build --workers 2 --datasets cr,sst5,mrpc --sizes 1000 \
  --student fresh4x128 --seeds 42,43 --out meta_dataset/v2_pilot/runs --preset-override "$RULE"
echo "fresh done rc=$?"
RULE_CUT=$(echo "$RULE" | sed 's/"learning_rate": 0.0005/"learning_rate": 0.0001/')
$PY -c "from autodistill.cli import main; main()" meta build --workers 2 --datasets cr,sst5,mrpc --sizes 1000 --student cut2 \
  --seeds 42,43 --portfolio no_kd,vanilla_kd,kd_kl_t4,aug_random,mi_alpha_0.9_skip,inter_pkd_last \
  --out meta_dataset/v2_pilot/runs --preset-override "$RULE_CUT"
echo "cut2 done rc=$?"
