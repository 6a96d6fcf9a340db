#!/usr/bin/env bash
# FID at n = N (the framework's Flowers102 feature network, seed 0, EMA weights; every stage
# with the midpoint sampler, 10 steps) of the cascade at three augmentation levels at sampling,
# of the 32 px base alone (against 32 px data), and 64-image grids. The direct 64 px model is
# scored by experiments/latent_flowers/evaluate.sh (JOB=pixel) under the same protocol.
#   bash experiments/cascade_flowers/evaluate.sh      (DIFFUSION_DATA: the folder holding flowers-102/)
#   SET=grid LEVELS="0.1" bash experiments/cascade_flowers/evaluate.sh   (SET: base, fid, grid)
set -euo pipefail
OUT=${OUT:-runs/cascade_flowers}
N=${N:-1000}
export OMP_NUM_THREADS=${THREADS:-2}
want() { [[ -z "${SET:-}" || "${SET}" == "$1" ]]; }
SAMPLER=(sampler=flow_midpoint sampler.steps=10)
want base && python -m diffusion.evaluate "run=$OUT/base" "n=$N" batch_size=250 \
  metrics.features=domain metrics.seed=0 plot=false "${SAMPLER[@]}"
for level in ${LEVELS:-0 0.1 0.3}; do
  want fid && python -m diffusion.evaluate "run=$OUT/base" "upsample=$OUT/sr" \
    "low_res_level=$level" "n=$N" batch_size=250 metrics.features=domain metrics.seed=0 \
    plot=false "${SAMPLER[@]}"
  want grid && python -m diffusion.sample "run=$OUT/base" "upsample=$OUT/sr" \
    "low_res_level=$level" n=64 seed=0 "${SAMPLER[@]}" \
    "out=experiments/cascade_flowers/cascade_level${level}.png"
done
want grid && python -m diffusion.sample "run=$OUT/base" n=64 seed=0 "${SAMPLER[@]}" \
  "out=experiments/cascade_flowers/base32.png"
true
