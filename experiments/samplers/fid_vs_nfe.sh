#!/usr/bin/env bash
# FID against network evaluations (NFE) for DDIM, DPM-Solver++(2M) and Heun on one trained
# model (the mnist_cpu recipe), trailing spacing, n images per FID against the MNIST test split.
#   RUN=runs/samplers/mnist_cpu N=500 bash experiments/samplers/fid_vs_nfe.sh
# The model: python -m diffusion.train experiment=mnist_cpu_ddpm logger=none hydra.run.dir=$RUN
set -euo pipefail
# NFE 100 is left out to fit a 2-core CPU budget (about 13 minutes per sampler at n=500);
# add 100 (heun: 50) to the step lists where time allows.
RUN=${RUN:-runs/samplers/mnist_cpu}
N=${N:-500}
common=(run="$RUN" n="$N" batch_size=250 sampler.timestep_spacing=trailing plot=false)
python -m diffusion.evaluate "${common[@]}" sampler=dpmpp_2m sampler.steps=5,10,20,50
python -m diffusion.evaluate "${common[@]}" sampler=ddim sampler.steps=5,10,20,50
# Heun evaluates the network twice per step but once in the last: steps s cost 2s - 1 NFE
python -m diffusion.evaluate "${common[@]}" sampler=heun sampler.steps=3,5,10,25
