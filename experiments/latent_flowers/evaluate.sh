#!/usr/bin/env bash
# FID of the pixel and the latent run at n = N (the framework's Flowers102 feature network,
# seed 0, the newest checkpoint's EMA weights; midpoint, 10 steps: 20 NFE), sampling speed, and
# 64-image grids; the autoencoder's own PSNR and reconstruction FID are in runs/latent_flowers/ae/eval.json.
#   bash experiments/latent_flowers/evaluate.sh        (DIFFUSION_DATA: the folder holding flowers-102/)
#   JOB=latent SET=fid bash experiments/latent_flowers/evaluate.sh   (JOB pixel|latent; SET fid|grid)
set -euo pipefail
OUT=${OUT:-runs/latent_flowers}
N=${N:-1000}
export OMP_NUM_THREADS=${THREADS:-2}
want() { [[ -z "${JOB:-}" || "${JOB}" == "$1" ]] && [[ -z "${SET:-}" || "${SET}" == "$2" ]]; }
for job in pixel latent; do
  want $job fid && python -m diffusion.evaluate "run=$OUT/$job" "n=$N" batch_size=250 \
    metrics.features=domain metrics.seed=0 plot=false sampler=flow_midpoint sampler.steps=10
  want $job grid && python -m diffusion.sample "run=$OUT/$job" n=64 seed=0 \
    "out=experiments/latent_flowers/${job}_midpoint10.png" sampler=flow_midpoint sampler.steps=10
done
true
