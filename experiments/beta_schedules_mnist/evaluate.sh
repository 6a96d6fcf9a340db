#!/usr/bin/env bash
# The schedule comparison's FIDs for one trained job: DDIM with leading and with trailing
# spacing (the confound: leading DDIM-10 starts at t = 900, not at the pure noise of t = 999),
# DPM-Solver++(2M) with trailing spacing, and DDPM at all 1,000 steps.
#   RUN=runs/beta_schedules_mnist/beta_linear/0 bash experiments/beta_schedules_mnist/evaluate.sh
# (the job folders of the README's train lines). N = 1,000 per DDIM/DPM-Solver++ cell (DDPM-1000:
# n = 200, or N where that is smaller): about 15 to 20 minutes per job on
# one core of a 2-core CPU.
set -euo pipefail
RUN=${RUN:?set RUN to a trained job folder}
N=${N:-1000}
common=(run="$RUN" n="$N" batch_size=250 plot=false)
python -m diffusion.evaluate "${common[@]}" sampler=ddim sampler.steps=10,20,50,100 \
  sampler.timestep_spacing=trailing
python -m diffusion.evaluate "${common[@]}" sampler=dpmpp_2m sampler.steps=10,20,50 \
  sampler.timestep_spacing=trailing
python -m diffusion.evaluate "${common[@]}" sampler=ddim sampler.steps=10,20,50,100 \
  sampler.timestep_spacing=leading
if [ "${DDPM:-1}" = 1 ]; then
  python -m diffusion.evaluate run="$RUN" n=$(( N < 200 ? N : 200 )) batch_size=200 plot=false \
    sampler=ddpm sampler.steps=1000
fi
