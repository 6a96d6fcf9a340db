#!/usr/bin/env bash
# FID (n = 1,000, the LeNet features, seed 0) at NFE 1, 2, 4, 10, 20 and 50 for each run of
# train.sh and reflow.sh, with each formulation's first-order sampler at every NFE and its
# second-order ones where they could win (few NFE: at 50 every sampler of experiments/samplers
# is at its plateau); the table takes the best at each NFE. Then the grids and the tables.
#   bash experiments/formulations_mnist/evaluate.sh     (DIFFUSION_DATA: the folder holding MNIST/raw)
#   JOB=reflow bash experiments/formulations_mnist/evaluate.sh   (one of ddpm, edm, flow, flow_ln, reflow)
set -euo pipefail
OUT=${OUT:-runs/formulations_mnist}
DDPM=${DDPM:-runs/score_sde_mnist/ddpm_v_minsnr/0}   # experiments/score_sde_mnist's run
N=${N:-1000}
export OMP_NUM_THREADS=${THREADS:-2}
NFE=1,2,4,10,20,50
want() { [[ -z "${JOB:-}" || "${JOB}" == "$1" ]]; }
fid() { python -m diffusion.evaluate "run=$1" "n=$N" batch_size=250 metrics.features=domain \
          metrics.seed=0 plot=false "${@:2}"; }
grid() { python -m diffusion.sample "run=$1" n=64 seed=0 \
           "out=experiments/formulations_mnist/$2.png" "${@:3}"; }
if want ddpm; then   # DDPM (v-prediction, Min-SNR): DPM-Solver++(2M), NFE = steps
  fid "$DDPM" sampler=dpmpp_2m "sampler.steps=$NFE"
  grid "$DDPM" ddpm_dpmpp2m10 sampler=dpmpp_2m sampler.steps=10
fi
if want edm; then    # EDM: DPM-Solver++(2M) and Euler on the rho = 7 ramp; its Heun (2 s - 1)
  fid "$OUT/edm/0" sampler=edm_dpmpp_2m "sampler.steps=$NFE"
  fid "$OUT/edm/0" sampler=edm_euler sampler.steps=1,2,4,10,20
  fid "$OUT/edm/0" sampler=edm sampler.steps=10                         # NFE 19
  grid "$OUT/edm/0" edm_dpmpp2m10 sampler=edm_dpmpp_2m sampler.steps=10
fi
for job in flow flow_ln reflow; do   # flow matching: Euler and DPM-Solver++(2M) (NFE = steps),
                                     # midpoint (2 a step)
  want "$job" || continue
  run="$OUT/$job/0"
  [[ "$job" == reflow ]] && run="$OUT/flow/0-reflow"
  fid "$run" sampler=flow_euler "sampler.steps=$NFE"
  fid "$run" sampler=flow_euler sampler.spacing=trailing sampler.steps=2,4,10  # 1, 1/2, ... 0
  fid "$run" sampler=flow_midpoint sampler.steps=1,2,5                  # NFE 2, 4, 10
  fid "$run" sampler=flow_midpoint sampler.spacing=trailing sampler.steps=2,5
  fid "$run" sampler=flow_dpmpp_2m sampler.steps=2,4,10,20              # (1 step: Euler's)
  grid "$run" "${job}_euler10" sampler=flow_euler sampler.steps=10
  grid "$run" "${job}_euler2" sampler=flow_euler sampler.spacing=trailing sampler.steps=2
done
python experiments/formulations_mnist/table.py "$OUT" "$DDPM"
