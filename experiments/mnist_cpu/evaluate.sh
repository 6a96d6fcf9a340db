#!/usr/bin/env bash
# FID of the two runs of train.sh at n = 10,000 (the framework's LeNet features, seed 0, the
# newest checkpoint's EMA weights) with DPM-Solver++(2M) at 10 and 20 steps and DDIM at 50 (on
# the flow-matching run: flow_dpmpp_2m, and flow_euler, which is DDIM's update on a flow), plus
# the new recipe's own sampler (midpoint, 5 trailing steps: 10 NFE); then 64-image grids.
#   bash experiments/mnist_cpu/evaluate.sh             (DIFFUSION_DATA: the folder holding MNIST/raw)
#   JOB=new SET=dpm bash experiments/mnist_cpu/evaluate.sh   (JOB old|new; SET dpm|ddim|own|grid)
#   N=2000 SET=ddim bash experiments/mnist_cpu/evaluate.sh   (the README's DDIM-50 column: n = 2,000)
set -euo pipefail
OUT=${OUT:-runs/mnist_cpu_final}
N=${N:-10000}
export OMP_NUM_THREADS=${THREADS:-2}
want() { [[ -z "${JOB:-}" || "${JOB}" == "$1" ]] && [[ -z "${SET:-}" || "${SET}" == "$2" ]]; }
fid() { python -m diffusion.evaluate "run=$1" "n=$N" batch_size=500 metrics.features=domain \
          metrics.seed=0 plot=false "${@:2}"; }
grid() { python -m diffusion.sample "run=$1" n=64 seed=0 "out=experiments/mnist_cpu/$2.png" \
           "${@:3}"; }
want old dpm && fid "$OUT/old" sampler=dpmpp_2m sampler.steps=10,20
want old ddim && fid "$OUT/old" sampler=ddim sampler.steps=50
want old grid && grid "$OUT/old" old_recipe_dpmpp2m20 sampler=dpmpp_2m sampler.steps=20
want new dpm && fid "$OUT/new" sampler=flow_dpmpp_2m sampler.steps=10,20
want new ddim && fid "$OUT/new" sampler=flow_euler sampler.steps=50
want new own && fid "$OUT/new" sampler=flow_midpoint sampler.steps=5
want new grid && grid "$OUT/new" new_recipe_midpoint5 sampler=flow_midpoint sampler.steps=5
true
