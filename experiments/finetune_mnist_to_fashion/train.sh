#!/usr/bin/env bash
# An MNIST model adapted to FashionMNIST: LoRA at ranks 1, 4 and 16 and full fine-tuning from
# the same base (experiments/mnist_cpu's new recipe, runs/mnist_cpu_final/new), and the same
# network from scratch, each for STEPS (default 1,000) steps at the recipe's batch and lr, one
# after the other on two threads; a 500-image FID against FashionMNIST every EVAL_EVERY (250)
# steps (the framework's FashionMNIST features). Arguments are overrides for every run.
#   bash experiments/finetune_mnist_to_fashion/train.sh   (DIFFUSION_DATA: MNIST/ and FashionMNIST/)
#   JOB=lora4 bash experiments/finetune_mnist_to_fashion/train.sh  (lora1|lora4|lora16|full|scratch)
#   OUT=runs/finetune_timing STEPS=100 EVAL_EVERY=0 bash experiments/finetune_mnist_to_fashion/train.sh
set -euo pipefail
OUT=${OUT:-runs/finetune_mnist_to_fashion}
BASE=${BASE:-runs/mnist_cpu_final/new}
export OMP_NUM_THREADS=${THREADS:-2}
COMMON=(experiment=mnist_cpu data=fashion_mnist logger=none trainer.progress=false
        "trainer.max_steps=${STEPS:-1000}" "trainer.eval_every=${EVAL_EVERY:-250}"
        trainer.eval_n=500 trainer.sample_every=250 trainer.ckpt_every=250
        metrics.features=domain paths.runs_dir=runs)
run() {  # name, overrides...
  if [[ -z "${JOB:-}" || "${JOB}" == "$1" ]]; then
    python -m diffusion.train "${COMMON[@]}" "${@:2}" "${EXTRA[@]}" "hydra.run.dir=$OUT/$1"
  fi
}
EXTRA=("$@")
for rank in 1 4 16; do
  run "lora$rank" "init_from=$BASE" finetune=lora "finetune.rank=$rank"
done
run full "init_from=$BASE" finetune=full
run scratch
