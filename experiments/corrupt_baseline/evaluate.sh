#!/usr/bin/env bash
# FID at n = N (default 1,000; the framework's MNIST features, seed 0, EMA weights) of both
# runs of train.sh: the corrupt model with its own sampler at 1, 5, 10 and 40 steps (1 step:
# its x_0 prediction from pure noise), DDPM with DDIM at 10 and 40 steps and DPM-Solver++(2M) at
# 10; then 64-image grids and the denoising strips (the chain, 8 frames).
#   bash experiments/corrupt_baseline/evaluate.sh   (DIFFUSION_DATA: the folder holding MNIST/raw)
#   SET=grid bash experiments/corrupt_baseline/evaluate.sh    (SET: fid, grid)
set -euo pipefail
OUT=${OUT:-runs/corrupt_baseline}
N=${N:-1000}
export OMP_NUM_THREADS=${THREADS:-2}
want() { [[ -z "${SET:-}" || "${SET}" == "$1" ]]; }
fid() { python -m diffusion.evaluate "run=$1" "n=$N" batch_size=500 metrics.features=domain \
          metrics.seed=0 plot=false "${@:2}"; }
grid() { python -m diffusion.sample "run=$1" n=64 seed=0 "out=experiments/corrupt_baseline/$2.png" \
           "${@:3}"; }
want fid && fid "$OUT/corrupt" sampler=corrupt sampler.steps=1,5,10,40
want fid && fid "$OUT/ddpm" sampler=ddim sampler.steps=10,40
want fid && fid "$OUT/ddpm" sampler=dpmpp_2m sampler.steps=10
want grid && grid "$OUT/corrupt" corrupt_10 sampler=corrupt sampler.steps=10
want grid && grid "$OUT/corrupt" corrupt_1 sampler=corrupt sampler.steps=1
want grid && grid "$OUT/ddpm" ddpm_ddim10 sampler=ddim sampler.steps=10
true
