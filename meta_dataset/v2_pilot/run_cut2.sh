#!/bin/bash
# The pilot's cut 2-layer student (mild compression): 6 candidates x cr, snli, sst5 x seeds 42, 43 at 1,000 rows,
# under the converged rule; from a worktree at a fixed commit (87e0a13 for the first runs), records into
# meta_dataset/v2_pilot/runs. Resumable; report: autodistill meta pilot --student cut2.
set -u
export AUTODISTILL_CACHE=${AUTODISTILL_CACHE:-$HOME/.cache/autodistill_build} OMP_NUM_THREADS=1
for ds in cr snli sst5; do
  "${PYTHON:-.venv/bin/python}" -m autodistill.cli meta build --datasets $ds --sizes 1000 --student cut2 --seeds 42,43 \
    --portfolio no_kd,vanilla_kd,kd_kl_t4,aug_random,mi_alpha_0.9_skip,inter_pkd_last --out meta_dataset/v2_pilot/runs
done
