#!/usr/bin/env bash
# FID (n = 1,000, the LeNet features, seed 0) at matched NFE (about 20 and 100) and bits/dim
# (probability-flow ODE, n = 500 test images; the variational bound too for the DDPM run) for
# the three runs of train.sh. One job at a time, two threads.
#   DIFFUSION_DATA=../shared/data bash experiments/score_sde_mnist/evaluate.sh
set -euo pipefail
OUT=${OUT:-runs/score_sde_mnist}
N=${N:-1000}
NLL_N=${NLL_N:-$(( N / 2 ))}
export OMP_NUM_THREADS=2
fid() { python -m diffusion.evaluate "run=$1" "n=$N" batch_size=250 metrics.features=domain \
          metrics.seed=0 plot=false "${@:2}"; }
for run in "$OUT/ve/0" "$OUT/vp/0"; do
  fid "$run" sampler=pc sampler.steps=10,50      # NFE 20, 100
  fid "$run" sampler=ode sampler.steps=10,50     # NFE 19, 99
  fid "$run" sampler=em sampler.steps=20,100     # NFE 20, 100
done
fid "$OUT/ve/0" sampler=ald sampler.steps=4,20  # NCSN's sampler: NFE 21, 101
fid "$OUT/ddpm_v_minsnr/0" sampler=ddim sampler.steps=20,100
fid "$OUT/ddpm_v_minsnr/0" sampler=dpmpp_2m sampler.steps=20,100
fid "$OUT/ddpm_v_minsnr/0" sampler=ode sampler.steps=10,50
for run in "$OUT/ve/0" "$OUT/vp/0" "$OUT/ddpm_v_minsnr/0"; do
  python -m diffusion.evaluate "run=$run" metrics=nll "n=$NLL_N"
done
