#!/usr/bin/env bash
# A ControlNet on the MNIST model of experiments/mnist_cpu (its new recipe, runs/mnist_cpu_final/
# new: flow matching on the 280k-parameter attention UNet), conditioned on Canny edge maps of the
# training images, STEPS (default 1,000) steps at the recipe's batch and lr on two threads.
#   bash experiments/control_mnist/train.sh        (DIFFUSION_DATA: the folder holding MNIST/raw)
set -euo pipefail
OUT=${OUT:-runs/control_mnist}
BASE=${BASE:-runs/mnist_cpu_final/new}
export OMP_NUM_THREADS=${THREADS:-2}
python -m diffusion.train experiment=mnist_cpu "init_from=$BASE" control=edges logger=none \
  trainer.progress=false "trainer.max_steps=${STEPS:-1000}" trainer.sample_every=250 \
  trainer.ckpt_every=250 paths.runs_dir=runs "hydra.run.dir=$OUT/edges"
