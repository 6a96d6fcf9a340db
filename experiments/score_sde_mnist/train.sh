#!/usr/bin/env bash
# Score SDEs on MNIST at the objectives_mnist budget: a VE and a VP process trained by
# denoising score matching, and the best DDPM objective of experiments/objectives_mnist
# (v_minsnr), each with the same 280k-parameter model, 2,000 steps, seed 0.
# Two jobs side by side, one thread each; then the third.
#   bash experiments/score_sde_mnist/train.sh     (DIFFUSION_DATA: the folder holding MNIST/raw)
set -euo pipefail
OUT=${OUT:-runs/score_sde_mnist}
COMMON=(experiment=mnist_cpu_ddpm model.base_channels=16 "trainer.max_steps=${STEPS:-2000}"
        logger=none trainer.progress=false trainer.eval_every=500 "trainer.eval_n=${N:-500}"
        sampler=ode sampler.steps=10 metrics.features=domain paths.runs_dir=runs)
export OMP_NUM_THREADS=1
python -m diffusion.train -m scheduler=ve objective=dsm "${COMMON[@]}" "hydra.sweep.dir=$OUT/ve" &
ve=$!
python -m diffusion.train -m scheduler=vp objective=dsm "${COMMON[@]}" "hydra.sweep.dir=$OUT/vp" &
vp=$!
wait "$ve"
wait "$vp"
OMP_NUM_THREADS=2 python -m diffusion.train -m objective=v_minsnr "${COMMON[@]}" \
    "hydra.sweep.dir=$OUT/ddpm_v_minsnr"
# NCSN (experiment=ncsn_mnist: 10 geometric levels, annealed Langevin grids), the same budget;
# its periodic FID with its own sampler (ald, 10 levels x 10 steps + the jump: 101 NFE), so
# every 1,000 steps rather than 500.
NCSN_THREADS=${NCSN_THREADS:-2}
OMP_NUM_THREADS=$NCSN_THREADS python -m diffusion.train -m experiment=ncsn_mnist \
    model.base_channels=16 "trainer.max_steps=${STEPS:-2000}" logger=none \
    trainer.progress=false trainer.eval_every=1000 "trainer.eval_n=${N:-500}" \
    metrics.features=domain paths.runs_dir=runs "hydra.sweep.dir=$OUT/ncsn"
