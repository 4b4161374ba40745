#!/bin/bash
# The v2 build (issue 16), resumable: run from a worktree at the build's fixed commit, e.g.
#   git worktree add ../v2build a9dff14 && cd ../v2build && cp -r ../main/meta_dataset/v2/{runs,features} meta_dataset/v2/
#   nohup nice -n 19 bash ../main/meta_dataset/v2/run_build.sh > build.log 2>&1 &
# then copy meta_dataset/v2/{runs,features} back into the main tree and commit them, piece by piece.
# Layer by layer: every dataset at 500 rows first, then every dataset at 2,000 (the same contexts, presets and
# runs as the default order, which goes dataset by dataset; see v2/preregistration.md, Changes). Within a layer
# WORKERS single-threaded processes claim contexts (both seeds of a context before the next); a fresh
# machine re-fine-tunes the teacher of each context it resumes (checked against the features file).
set -u
PORTFOLIO=no_kd,vanilla_kd,mi_alpha_0.5_skip,aug_neighbour_random_mixup_mi0.9,dyn_select_entropy_weight_linear,rail_c_random,rail_l_random,inter_pkd_last
export AUTODISTILL_CACHE=${AUTODISTILL_CACHE:-$HOME/.cache/autodistill_build}
for size in ${SIZES:-500 2000}; do
  "${PYTHON:-.venv/bin/python}" -m autodistill.cli meta build --workers "${WORKERS:-2}" --sizes "$size" --portfolio "$PORTFOLIO" || exit $?
done
