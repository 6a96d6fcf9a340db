#!/usr/bin/env bash
# FID (n = N, default 1,000; the framework's MNIST features, seed 0) and edge adherence (the IoU
# of each generated image's Canny map with its test image's) at control_scale 0 (the base
# model's own draws: the floor), 0.5 and 1, with the recipe's sampler (midpoint, 5 steps); then
# grids of the draws at each scale, of the controls and of the test images they come from.
#   bash experiments/control_mnist/evaluate.sh     (DIFFUSION_DATA: the folder holding MNIST/raw)
set -euo pipefail
OUT=${OUT:-runs/control_mnist}
N=${N:-1000}
export OMP_NUM_THREADS=${THREADS:-2}
python -m diffusion.evaluate "run=$OUT/edges" "n=$N" batch_size=500 metrics.features=domain \
  metrics.seed=0 plot=false sampler=flow_midpoint sampler.steps=5 control_image=test \
  control_scale=0,0.5,1
for scale in 0 0.5 1; do
  python -m diffusion.sample "run=$OUT/edges" n=64 seed=0 sampler=flow_midpoint sampler.steps=5 \
    control_image=test "control_scale=$scale" "out=experiments/control_mnist/scale$scale.png"
done
# the controls and their test images are the same at every scale: one copy of each
cd experiments/control_mnist
mv scale1_control.png controls.png && mv scale1_source.png originals.png
rm -f scale0_control.png scale0_source.png scale0.5_control.png scale0.5_source.png
