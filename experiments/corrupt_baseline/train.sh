#!/usr/bin/env bash
# The Hugging Face course's corrupt-and-denoise model against DDPM on MNIST: the same backbone
# (experiment=mnist_cpu's 280k-parameter attention UNet), optimizer, batch and steps (STEPS,
# default 1,500), side by side on one thread each. Only the formulation differs: uniform noise
# mixed in at a ~ U(0, 1) with an x_0 MSE (objective=corrupt), against DDPM's Gaussian forward
# process over 1,000 steps with the epsilon MSE (Ho et al. 2020).
#   bash experiments/corrupt_baseline/train.sh     (DIFFUSION_DATA: the folder holding MNIST/raw)
#   JOB=ddpm bash experiments/corrupt_baseline/train.sh       (JOB: corrupt, ddpm)
set -euo pipefail
OUT=${OUT:-runs/corrupt_baseline}
export OMP_NUM_THREADS=${THREADS:-1}
COMMON=(experiment=mnist_cpu logger=none trainer.progress=false "trainer.max_steps=${STEPS:-1500}"
        trainer.eval_every=0 trainer.sample_every=500 trainer.ckpt_every=500 paths.runs_dir=runs)
run() {  # name, overrides...
  if [[ -z "${JOB:-}" || "${JOB}" == "$1" ]]; then
    python -m diffusion.train "${COMMON[@]}" "${@:2}" "hydra.run.dir=$OUT/$1"
  fi
}
run corrupt scheduler=corrupt objective=corrupt sampler=corrupt sampler.steps=10 &
run ddpm scheduler=ddpm objective=eps sampler=ddim sampler.steps=10 &
wait
