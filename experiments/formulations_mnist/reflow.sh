#!/usr/bin/env bash
# One reflow of the uniform-t flow-matching run (train.sh's JOB=flow): PAIRS (noise, image)
# pairs from its ODE (midpoint, 10 steps: 20 NFE), then the 2-rectified flow trained on them
# from its EMA weights with the first run's settings (2,000 steps, uniform t), and the
# straightness of both runs' paths (256 paths, 50 Euler steps). Resumable: run it again.
#   bash experiments/formulations_mnist/reflow.sh     (DIFFUSION_DATA: the folder holding MNIST/raw)
set -euo pipefail
OUT=${OUT:-runs/formulations_mnist}
export OMP_NUM_THREADS=${THREADS:-1}
python -m diffusion.reflow "run=$OUT/flow/0" "pairs=${PAIRS:-10000}" shard_size=1000 \
  sampler=flow_midpoint sampler.steps=10 device=cpu
