#!/usr/bin/env bash
# The old and the new mnist_cpu recipe trained for the same wall-clock budget, one after the
# other, two threads each, nothing else running: trainer.max_minutes stops each with a
# checkpoint (both learning rates are constant after warm-up, so the step cap plays no part).
#   bash experiments/mnist_cpu/train.sh                (DIFFUSION_DATA: the folder holding MNIST/raw)
#   JOB=new MINUTES=25 bash experiments/mnist_cpu/train.sh      (one of them: old, new)
set -euo pipefail
OUT=${OUT:-runs/mnist_cpu_final}
COMMON=(experiment=mnist_cpu logger=none trainer.progress=false "trainer.max_steps=${STEPS:-1000000}"
        "trainer.max_minutes=${MINUTES:-25}" paths.runs_dir=runs)
export OMP_NUM_THREADS=${THREADS:-2}
run() {  # name, overrides...
  if [[ -z "${JOB:-}" || "${JOB}" == "$1" ]]; then
    python -m diffusion.train "${COMMON[@]}" "${@:2}" "hydra.run.dir=$OUT/$1"
  fi
}
# the recipe up to 2026-12-05: DDPM epsilon prediction, the 1.1M-parameter model, fp32, DDIM grids
run old scheduler=ddpm objective=eps sampler=ddim sampler.steps=25 model.base_channels=32 \
    optimizer.lr=1e-3 trainer.precision=fp32
# the recipe now (conf/experiment/mnist_cpu.yaml)
run new
