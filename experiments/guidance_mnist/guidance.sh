#!/usr/bin/env bash
# FID against class accuracy over guidance scales on one class-conditional model (the
# mnist_cpu recipe with conditioning=class), n class-balanced images per point (DDIM,
# trailing spacing), and per-class grids at three scales.
#   RUN=runs/guidance_mnist/mnist_cpu_class CLASSIFIER=runs/guidance_mnist/classifier N=500 \
#     SAMPLER_STEPS=10 bash experiments/guidance_mnist/guidance.sh
# The model:      python -m diffusion.train experiment=mnist_cpu_ddpm conditioning=class logger=none hydra.run.dir=$RUN
# The classifier: python -m diffusion.train_classifier data=mnist steps=1500 hydra.run.dir=$CLASSIFIER
set -euo pipefail
RUN=${RUN:-runs/guidance_mnist/mnist_cpu_class}
CLASSIFIER=${CLASSIFIER:-runs/guidance_mnist/classifier}
N=${N:-500}
SAMPLER_STEPS=${SAMPLER_STEPS:-10}  # reverse steps (STEPS is the README's training steps)
OUT=experiments/guidance_mnist
common=(run="$RUN" n="$N" sampler=ddim sampler.steps="$SAMPLER_STEPS" batch_size=250
        sampler.timestep_spacing=trailing plot=false)
# classifier-free guidance: 0 is the unconditional model (null label), 1 the conditional one
python -m diffusion.evaluate "${common[@]}" guidance_scale=0,1,1.5,2,3,5,7.5
# one column per class (labels 0..9 along each row), ten rows of samples, three scales
for w in 0 1 3; do
  python -m diffusion.sample run="$RUN" sampler=ddim sampler.steps="$SAMPLER_STEPS" n=100 \
    labels=all guidance_scale="$w" out="$OUT/grid_cfg$w.png"
done
# classifier guidance of the model's unconditional half (guidance_scale=0: the null label)
# and of its conditional one (guidance_scale=1)
python -m diffusion.evaluate "${common[@]}" guidance_scale=0 classifier="$CLASSIFIER" \
  classifier_scale=1,2,4
python -m diffusion.evaluate "${common[@]}" guidance_scale=1 classifier="$CLASSIFIER" \
  classifier_scale=2
