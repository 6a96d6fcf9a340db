#!/usr/bin/env bash
# Flowers102 at 64 px on a CPU: the KL autoencoder (f = 4: 64 x 64 x 3 -> 16 x 16 x 4), then a
# pixel-space and a latent-space flow-matching model trained for the same wall-clock budget,
# one after the other, two threads each, nothing else running. The autoencoder's time is its
# own (train_autoencoder prints it; eval.json and metrics.jsonl keep it).
#   bash experiments/latent_flowers/train.sh      (DIFFUSION_DATA: the folder holding flowers-102/)
#   JOB=ae AE_STEPS=3000 bash experiments/latent_flowers/train.sh   (JOB: ae, pixel, latent)
set -euo pipefail
OUT=${OUT:-runs/latent_flowers}
export OMP_NUM_THREADS=${THREADS:-2}
want() { [[ -z "${JOB:-}" || "${JOB}" == "$1" ]]; }
DATA=(data=flowers102 data.image_size=64 data.num_workers=0 data.on_device=true)
if want ae; then
  if [[ -f "$OUT/ae/config.yaml" ]]; then
    python -m diffusion.train_autoencoder "resume=$OUT/ae" "steps=${AE_STEPS:-${STEPS:-3000}}"
  else
    python -m diffusion.train_autoencoder "${DATA[@]}" autoencoder=kl_f4 \
      "steps=${AE_STEPS:-${STEPS:-3000}}" batch_size=16 eval_every=500 eval_n=500 progress=false \
      "hydra.run.dir=$OUT/ae"
  fi
fi
# the same recipe in pixels and in latents: flow matching with logit-normal t, the midpoint
# sampler, an attention UNet of width 32 with one level fewer on the 16 x 16 latents (so both
# networks reach 8 x 8 at their lowest level)
COMMON=(model=unet_attn scheduler=flow objective=flow_logit_normal sampler=flow_midpoint
        sampler.steps=10 trainer=cpu logger=none trainer.progress=false
        model.base_channels=32 model.num_res_blocks=1 model.norm_groups=8 model.dropout=0.0
        optimizer.lr=1e-3 data.batch_size=32 "trainer.max_steps=${STEPS:-1000000}"
        "trainer.max_minutes=${MINUTES:-25}" trainer.sample_every=1000 trainer.val_every=1000
        trainer.ckpt_every=500 trainer.sample_n=36 metrics.features=domain paths.runs_dir=runs)
run() {  # name, overrides...
  if want "$1"; then
    if [[ -f "$OUT/$1/config.yaml" ]]; then
      python -m diffusion.train "resume=$OUT/$1" "trainer.max_minutes=${MINUTES:-25}"
    else
      python -m diffusion.train "${DATA[@]}" "${COMMON[@]}" "${@:2}" "hydra.run.dir=$OUT/$1"
    fi
  fi
}
run pixel model.channel_mult=[1,2,2,2] model.attention_resolutions=[16,8]
run latent "latent=$OUT/ae" model.channel_mult=[1,2] model.attention_resolutions=[16,8]
