#!/usr/bin/env bash
# Flowers102 as a cascade on a CPU: a 32 px base model and a 32 -> 64 super-resolution stage
# (conditioning=low_res, noise-conditioning augmentation U(0, 0.5)), each trained for MINUTES
# (default 12.5) of wall-clock on one thread, side by side. Together they spend what the direct
# 64 px model of experiments/latent_flowers (JOB=pixel: the same recipe, 25 min on one thread)
# spends, so the two compare at equal total compute.
#   bash experiments/cascade_flowers/train.sh      (DIFFUSION_DATA: the folder holding flowers-102/)
#   JOB=sr bash experiments/cascade_flowers/train.sh   (JOB: base, sr)
set -euo pipefail
OUT=${OUT:-runs/cascade_flowers}
export OMP_NUM_THREADS=${THREADS:-1}
want() { [[ -z "${JOB:-}" || "${JOB}" == "$1" ]]; }
# the recipe of experiments/latent_flowers: flow matching with logit-normal t, the midpoint
# sampler, an attention UNet of width 32 for the base (one level fewer than the direct model's:
# both reach 8 x 8)
COMMON=(data=flowers102 data.num_workers=0 data.on_device=true
        model=unet_attn scheduler=flow objective=flow_logit_normal sampler=flow_midpoint
        sampler.steps=10 trainer=cpu logger=none trainer.progress=false
        model.base_channels=32 model.num_res_blocks=1 model.norm_groups=8 model.dropout=0.0
        optimizer.lr=1e-3 data.batch_size=32
        "trainer.max_steps=${STEPS:-1000000}" "trainer.max_minutes=${MINUTES:-12.5}"
        trainer.sample_every=1000 trainer.val_every=1000 trainer.ckpt_every=500
        trainer.sample_n=36 metrics.features=domain paths.runs_dir=runs)
run() {  # name, overrides...
  if want "$1"; then
    if [[ -f "$OUT/$1/config.yaml" ]]; then
      python -m diffusion.train "resume=$OUT/$1" "trainer.max_minutes=${MINUTES:-12.5}"
    else
      python -m diffusion.train "${COMMON[@]}" "${@:2}" "hydra.run.dir=$OUT/$1"
    fi
  fi
}
run base data.image_size=32 model.channel_mult=[1,2,2] model.attention_resolutions=[16,8] &
# the stage at half the width, attention at 8 x 8 only: at 64 px it costs about what the base
# does at 32 px, and its task (detail given the layout) is the easier one
run sr data.image_size=64 model.channel_mult=[1,2,2,2] model.base_channels=16 \
  model.attention_resolutions=[8] conditioning=low_res &
wait
