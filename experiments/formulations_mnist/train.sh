#!/usr/bin/env bash
# Formulations on MNIST at the objectives_mnist budget (the 280k-parameter attention UNet,
# 2,000 steps of batch 64, AdamW 1e-3, EMA 0.999, seed 0): EDM, and flow matching with uniform
# and logit-normal t (the rectified flow: reflow.sh, after JOB=flow). The DDPM run
# (objective=v_minsnr, the best of objectives_mnist) is experiments/score_sde_mnist's, trained
# at the same budget. Each job one thread; the periodic FID (n = 500, every 500 steps) with the
# formulation's own sampler at about 20 NFE.
#   bash experiments/formulations_mnist/train.sh     (DIFFUSION_DATA: the folder holding MNIST/raw)
#   JOB=edm bash experiments/formulations_mnist/train.sh       (one of them: edm, flow, flow_ln)
set -euo pipefail
OUT=${OUT:-runs/formulations_mnist}
COMMON=(experiment=mnist_cpu_ddpm model.base_channels=16 "trainer.max_steps=${STEPS:-2000}"
        logger=none trainer.progress=false trainer.eval_every=500 "trainer.eval_n=${N:-500}"
        metrics.features=domain paths.runs_dir=runs)
export OMP_NUM_THREADS=${THREADS:-1}
run() {  # name, overrides...
  if [[ -z "${JOB:-}" || "${JOB}" == "$1" ]]; then
    python -m diffusion.train -m "${COMMON[@]}" "${@:2}" "hydra.sweep.dir=$OUT/$1"
  fi
}
run edm scheduler=edm objective=edm sampler=edm sampler.steps=10               # 19 NFE
run flow scheduler=flow objective=flow sampler=flow_euler sampler.steps=20     # 20 NFE
run flow_ln scheduler=flow objective=flow objective.t_sampling=logit_normal \
    sampler=flow_euler sampler.steps=20
