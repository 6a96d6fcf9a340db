#!/usr/bin/env bash
# FID (n = 1,000, the LeNet features, seed 0) at about 100 network evaluations for each
# formulation, and bits/dim on the first 100 test images (probability-flow ODE; the
# variational bound too for the DDPM run), for the three runs of train.sh. One job at a time.
#   bash experiments/score_sde_mnist/evaluate.sh  (DIFFUSION_DATA: the folder holding MNIST/raw)
set -euo pipefail
OUT=${OUT:-runs/score_sde_mnist}
N=${N:-1000}
NLL_N=${NLL_N:-$(( N / 10 > 2 ? N / 10 : 2 ))}
export OMP_NUM_THREADS=2
fid() { python -m diffusion.evaluate "run=$1" "n=$N" batch_size=250 metrics.features=domain \
          metrics.seed=0 plot=false "${@:2}"; }
fid "$OUT/vp/0" sampler=ode sampler.steps=50                 # VP, probability-flow ODE: NFE 99
fid "$OUT/ve/0" sampler=pc sampler.steps=50                  # VE, predictor-corrector: 100
fid "$OUT/ddpm_v_minsnr/0" sampler=dpmpp_2m sampler.steps=100  # DDPM, DPM-Solver++(2M): 100
fid "$OUT/vp/0" sampler=pc sampler.steps=50                  # VP, predictor-corrector: 100
fid "$OUT/ve/0" sampler=ald sampler.steps=20                 # VE, annealed Langevin: 101
for run in "$OUT/vp/0" "$OUT/ve/0" "$OUT/ddpm_v_minsnr/0"; do
  python -m diffusion.evaluate "run=$run" metrics=nll "n=$NLL_N" "metrics.batch_size=$NLL_N"
done
fid "$OUT/ddpm_v_minsnr/0" sampler=ode sampler.steps=50      # DDPM table, the same ODE: 99
# the grids: 64 images each, the same seed
grid() { python -m diffusion.sample "run=$1" n=64 seed=0 "out=experiments/score_sde_mnist/$2.png" "${@:3}"; }
grid "$OUT/ve/0" ve_pc100 sampler=pc sampler.steps=50
grid "$OUT/ve/0" ve_ald101 sampler=ald sampler.steps=20
grid "$OUT/vp/0" vp_pc100 sampler=pc sampler.steps=50
grid "$OUT/vp/0" vp_ode99 sampler=ode sampler.steps=50
grid "$OUT/ddpm_v_minsnr/0" ddpm_dpmpp2m100 sampler=dpmpp_2m sampler.steps=100
python experiments/score_sde_mnist/table.py "$OUT"
# NCSN (train.sh's last run): annealed Langevin at matched NFE (10 levels x 10 steps + the
# jump: 101), and at Song & Ermon's 100 steps a level (1,001 NFE), its grid, and bits/dim
fid "$OUT/ncsn/0" sampler=ald sampler.steps=10 sampler.steps_per_level=10     # 101
python -m diffusion.evaluate "run=$OUT/ncsn/0" metrics=nll "n=$NLL_N" "metrics.batch_size=$NLL_N"
grid "$OUT/ncsn/0" ncsn_ald1001 sampler=ald sampler.steps=10 sampler.steps_per_level=100
fid "$OUT/ncsn/0" sampler=ald sampler.steps=10 sampler.steps_per_level=100    # 1,001
python experiments/score_sde_mnist/table.py "$OUT"
