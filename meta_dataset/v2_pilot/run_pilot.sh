#!/bin/bash
# pilot of meta-dataset v2 (issue 16), run from worktree /work/pilot at a fixed commit (2d115be)
cd /work/pilot
export PYTHONPATH=/work/pilot AUTODISTILL_CACHE=/work/cache_pilot OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
RULE=$(cat /work/pilot_rule_fresh.min.json)
W=${PILOT_WORKERS:-2}
# seed 43 on the two datasets whose seed 42 is complete first: the seed-noise table needs pairs
$PY -c "from autodistill.cli import main; main()" meta build --workers $W --datasets cr,sst5 --sizes 1000 \
  --student fresh4x128 --seeds 43 --out meta_dataset/v2_pilot/runs --preset-override "$RULE"
echo "seed43 cr,sst5 done rc=$?"
$PY -c "from autodistill.cli import main; main()" meta build --workers $W --datasets cr,sst5,mrpc --sizes 1000 \
  --student fresh4x128 --seeds 42,43 --out meta_dataset/v2_pilot/runs --preset-override "$RULE"
echo "fresh done rc=$?"
RULE_CUT=$(echo "$RULE" | sed 's/"learning_rate": 0.0005/"learning_rate": 0.0001/')
$PY -c "from autodistill.cli import main; main()" meta build --workers $W --datasets cr,sst5,mrpc --sizes 1000 --student cut2 \
  --seeds 42,43 --portfolio no_kd,vanilla_kd,kd_kl_t4,aug_random,mi_alpha_0.9_skip,inter_pkd_last \
  --out meta_dataset/v2_pilot/runs --preset-override "$RULE_CUT"
echo "cut2 done rc=$?"
