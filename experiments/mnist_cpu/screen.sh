#!/usr/bin/env bash
# The screen behind the recipe's defaults: short runs of flow matching with logit-normal t
# (the best formulation of experiments/formulations_mnist at equal steps), each against that
# record's 2,000-step run of the 280k-parameter model (runs/formulations_mnist/flow_ln/0), whose
# periodic FID used the same protocol: every 500 steps, n = 500, flow_euler at 20 steps, the
# framework's LeNet features, seed 0. Each job one thread; they run side by side, so compare
# steps, not wall-clock (the recipe's images/s come from `python -m diffusion.bench`).
#   bash experiments/mnist_cpu/screen.sh               (DIFFUSION_DATA: the folder holding MNIST/raw)
#   JOB=c32 bash experiments/mnist_cpu/screen.sh       (one of them: lr2e-3, b128, c32)
set -euo pipefail
OUT=${OUT:-runs/mnist_cpu_screen}
COMMON=(experiment=mnist_cpu scheduler=flow objective=flow objective.t_sampling=logit_normal
        sampler=flow_euler sampler.steps=20 logger=none trainer.progress=false
        "trainer.eval_n=${N:-500}" metrics.features=domain paths.runs_dir=runs)
export OMP_NUM_THREADS=${THREADS:-1}
run() {  # name, overrides...
  if [[ -z "${JOB:-}" || "${JOB}" == "$1" ]]; then
    python -m diffusion.train -m "${COMMON[@]}" "${@:2}" "hydra.sweep.dir=$OUT/$1"
  fi
}
# the 280k model at twice the learning rate
run lr2e-3 model.base_channels=16 optimizer.lr=2e-3 "trainer.max_steps=${STEPS:-1000}" trainer.eval_every=500
# twice the batch at half the steps (the same images), twice the learning rate
run b128 model.base_channels=16 data.batch_size=128 optimizer.lr=2e-3 lr_scheduler.warmup_steps=100 \
    "trainer.max_steps=$(( ${STEPS:-1000} / 2 ))" trainer.eval_every=250
# the recipe's 1.1M model: 1,000 steps cost about what the 280k model's 2,170 do (bench)
run c32 "trainer.max_steps=${STEPS:-1000}" trainer.eval_every=500
