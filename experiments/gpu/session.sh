#!/usr/bin/env bash
# One GPU session in about nine minutes: the recipe trainings (mnist and fashion_mnist for a
# wall-clock budget) beside the CUDA test module and the small CPU-recipe runs (the
# objectives sweep and the beta-schedule sweep, as SMALL_RUNS says), then FIDs at
# n = 10,000, then the speed bench against diffusers alone on the GPU. Everything a reader
# needs lands in $OUT as a few archives (logs, eval.json, metrics.jsonl, grids, the small
# runs' final weights).
#
#   OUT=runs/gpu-out DIFFUSION_DATA=<data> bash experiments/gpu/session.sh
#
# Every stage is cut to fit DEADLINE seconds (default 550) from the start: the trainings end
# by TRAIN_END (default 300 s), the FIDs leave BENCH_RESERVE seconds (240) to the bench and
# go in priority order (each step count is written to eval.json as soon as it is scored).
# EVAL_N (10000), BENCH (1), SMALL_RUNS ("objectives beta") and QUICK (0; 1 shrinks every
# stage to check this script on a CPU) change the sizes.
set -uo pipefail
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)   # absolute: the script works from the repository root
[[ -n ${DIFFUSION_DATA:-} ]] && DIFFUSION_DATA=$(cd "$DIFFUSION_DATA" && pwd)
cd "$(dirname "$0")/../.."
export DIFFUSION_DATA=${DIFFUSION_DATA:-$PWD/data}   # paths.data_dir's default
QUICK=${QUICK:-0}
DEADLINE=${DEADLINE:-550}
TRAIN_END=${TRAIN_END:-300}
SMALL_RUNS=${SMALL_RUNS:-objectives beta}
EVAL_N=${EVAL_N:-10000}
BENCH=${BENCH:-1}
BENCH_RESERVE=$(( BENCH == 1 ? ${BENCH_RESERVE:-240} : 0 ))
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 DIFFUSION_CACHE=${DIFFUSION_CACHE:-runs/gpu-cache}
PY=${PY:-python3}
RUNS=runs/gpu
LOGS=runs/gpu-logs   # packed into $OUT at the end ($OUT brings back 8 files at most)
rm -rf "$LOGS"; mkdir -p "$LOGS" "$RUNS"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( DEADLINE - ($(date +%s) - T0) - ${1:-0} )); }  # seconds to the deadline

# common overrides: no external logger, no progress bars
COMMON=(logger=none trainer.progress=false paths.runs_dir=$RUNS "paths.data_dir=$DIFFUSION_DATA")
if [[ $QUICK == 1 ]]; then
  EVAL_N=64
  SMALL=(trainer.max_steps=20 trainer.log_every=5 trainer.sample_every=10 trainer.val_every=10
         trainer.ckpt_every=10 trainer.sample_n=16 model.base_channels=16 model.norm_groups=8)
  CPU_STEPS=(trainer.max_steps=10 trainer.log_every=5 trainer.ckpt_every=5 trainer.val_every=5
             trainer.sample_every=5)
  DEV=(trainer.device=cpu)
  EVAL_STEPS="[2,4]"; DPM_STEPS="[2]"; FIXED_N=32; FEAT=(metrics.feature_epochs=1)
else
  SMALL=(); CPU_STEPS=(); DEV=(trainer.device=cuda); FIXED_N=1000
  EVAL_STEPS="[20,50,10,100]"; DPM_STEPS="[10,20]"   # most wanted first
  FEAT=()
fi

stamp "environment"
{ date -u; nvidia-smi 2>&1 | head -15; $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"; nproc; git log --oneline -1; } > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"

# -------------------------------------------------- 1. trainings beside the CUDA tests
TRAIN_MINUTES=$(python3 -c "print(round(max(0.2, ($TRAIN_END - $(( $(date +%s) - T0 )) - 30) / 60), 2))")
stamp "trainings start (budget ${TRAIN_MINUTES} min each for mnist and fashion_mnist)"
train() {  # name, then overrides
  local name=$1; shift
  $PY -m diffusion.train "${COMMON[@]}" "hydra.run.dir=$RUNS/$name" "$@" \
    > "$LOGS/train-$name.log" 2>&1
  echo "train $name rc=$?" >> "$LOGS/status.txt"
}
train mnist experiment=mnist data.on_device=true trainer.max_minutes=$TRAIN_MINUTES \
  trainer.sample_every=1000 trainer.val_every=1000 trainer.ckpt_every=1000 "${SMALL[@]}" &
train fashion_mnist experiment=fashion_mnist data.on_device=true \
  trainer.max_minutes=$TRAIN_MINUTES trainer.sample_every=1000 trainer.val_every=1000 \
  trainer.ckpt_every=1000 "${SMALL[@]}" &
# the CPU recipes (fp32, as on a CPU) for the CPU-sized experiments; the beta sweep's two
# runs one after the other, each stopping at half the budget if the GPU is slower than hoped
HALF=$(python3 -c "print(round($TRAIN_MINUTES / 2, 2))")
if [[ $SMALL_RUNS == *objectives* ]]; then  # side by side: each is small for the GPU
  for objective in eps v eps_minsnr v_minsnr; do
    train objective_$objective experiment=mnist_cpu_ddpm objective=$objective "${DEV[@]}" \
      trainer.max_minutes=$TRAIN_MINUTES "${CPU_STEPS[@]}" &
  done
fi
[[ $SMALL_RUNS == *beta* ]] && ( for schedule in linear cosine; do
    train beta_$schedule data=mnist trainer=cpu "${DEV[@]}" data.batch_size=64 \
      data.num_workers=0 data.on_device=true trainer.max_steps=2000 trainer.ema_decay=0.999 \
      trainer.log_every=50 trainer.sample_every=1000 trainer.val_every=500 \
      trainer.ckpt_every=1000 optimizer.lr=1e-3 lr_scheduler.warmup_steps=200 \
      model.base_channels=16 'model.channel_mult=[1,2,2]' model=unet_attn \
      model.num_res_blocks=1 'model.attention_resolutions=[7]' model.norm_groups=8 \
      model.dropout=0.0 scheduler.beta_schedule=$schedule trainer.max_minutes=$HALF \
      "${CPU_STEPS[@]}"
  done ) &
if [[ $QUICK != 1 ]]; then
  stamp "CUDA tests"
  timeout $(left 150) $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    "tests/test_resume.py::test_resume_on_cuda_is_exact" tests/test_samplers.py \
    tests/test_schedulers.py -k "cuda or test_cuda" -rs --durations=15 \
    > "$LOGS/pytest-cuda.log" 2>&1
  stamp "  pytest rc=$? $(tail -n 3 "$LOGS/pytest-cuda.log" | tr '\n' '|')"
fi
wait
stamp "trainings done: $(tr '\n' ' ' < "$LOGS/status.txt")"

# ----------------------------------------------------------------------- 2. FIDs
evaluate() {  # run, log name, overrides
  local run=$1 name=$2; shift 2
  local budget; budget=$(left $(( 15 + BENCH_RESERVE )))
  (( budget > 10 )) || { echo "eval $name skipped: no time left" >> "$LOGS/status.txt"; return; }
  timeout $budget $PY -m diffusion.evaluate "run=$RUNS/$run" "data_root=$DIFFUSION_DATA" "$@" \
    "${FEAT[@]}" > "$LOGS/eval-$name.log" 2>&1
  echo "eval $name rc=$?" >> "$LOGS/status.txt"
}
stamp "FIDs"
beta_fids() {  # trailing against leading spacing, then DPM-Solver++(2M), at n = FIXED_N
  for spacing in trailing leading; do
    for schedule in linear cosine; do
      evaluate beta_$schedule beta_$schedule-$spacing n=$FIXED_N sampler=ddim \
        "sampler.steps=$EVAL_STEPS" sampler.timestep_spacing=$spacing batch_size=1000
    done
  done
  for schedule in linear cosine; do
    evaluate beta_$schedule beta_$schedule-dpmpp n=$FIXED_N sampler=dpmpp_2m \
      "sampler.steps=$EVAL_STEPS" batch_size=1000
  done
}
# one process per dataset first, so that each feature network is trained and cached once
( evaluate mnist mnist-ddim n=$EVAL_N sampler=ddim "sampler.steps=$EVAL_STEPS" batch_size=2000
  beta_fids &
  evaluate mnist mnist-dpmpp n=$EVAL_N sampler=dpmpp_2m "sampler.steps=$DPM_STEPS" batch_size=2000
  wait ) &
chains() {  # a grid and a denoising GIF of each recipe (DDIM-50)
  local budget; budget=$(left 12)
  (( budget > 10 )) && timeout $budget $PY -m diffusion.sample "run=$RUNS/$1" n=16 \
    sampler=ddim sampler.steps=50 chain=true > "$LOGS/sample-$1.log" 2>&1
  echo "sample $1 rc=$?" >> "$LOGS/status.txt"
}
( evaluate fashion_mnist fashion_mnist-ddim n=$EVAL_N sampler=ddim "sampler.steps=$EVAL_STEPS" \
    batch_size=2000
  evaluate fashion_mnist fashion_mnist-dpmpp n=$EVAL_N sampler=dpmpp_2m "sampler.steps=$DPM_STEPS" \
    batch_size=2000
  chains fashion_mnist; chains mnist ) &
wait
stamp "evaluations done"

# ---------------------------------------------------------------- 4. speed, alone on the GPU (last: its first calls measure peaks and count FLOPs)
if [[ $BENCH == 1 ]]; then
  stamp "bench: mnist recipe vs diffusers (batch 128, bf16; sampling at 256 and 2048)"
  BENCH_ARGS=(bench.warmup=3 bench.repeats=5 bench.min_time_s=0.3 bench.sample_steps=50 bench.data=real
              "paths.data_dir=$DIFFUSION_DATA")
  [[ $QUICK == 1 ]] && BENCH_ARGS=(bench.warmup=1 bench.repeats=1 bench.sample_steps=2
                                  bench.min_time_s=0.1 "paths.data_dir=$DIFFUSION_DATA")
  for sample_n in 256 2048; do
    [[ $QUICK == 1 ]] && sample_n=4
    (( $(left 20) > 30 )) || continue
    timeout $(( $(left 20) < 150 ? $(left 20) : 150 )) $PY -m diffusion.bench vs=diffusers experiment=mnist data.batch_size=128 \
      bench.sample_n=$sample_n "${BENCH_ARGS[@]}" "${DEV[@]}" \
      bench.out=$LOGS/bench-mnist-b128-s$sample_n.json > "$LOGS/bench-mnist-s$sample_n.log" 2>&1
    stamp "  rc=$? $(tail -n 12 "$LOGS/bench-mnist-s$sample_n.log" | tr '\n' '|' | cut -c1-900)"
  done
  stamp "bench: the same with trainer.compile=true (ours only)"
  (( $(left 20) > 30 )) && timeout $(( $(left 20) < 150 ? $(left 20) : 150 )) \
    $PY -m diffusion.bench experiment=mnist data.batch_size=128 trainer.compile=true \
    bench.sample_n=2048 "${BENCH_ARGS[@]}" "${DEV[@]}" \
    bench.out=$LOGS/bench-mnist-b128-compile.json > "$LOGS/bench-mnist-compile.log" 2>&1
  stamp "  rc=$? $(tail -n 8 "$LOGS/bench-mnist-compile.log" | tr '\n' '|' | cut -c1-700)"
  tar -czf "$OUT/bench.tgz" -C runs gpu-logs
fi

# ------------------------------------------------------------------------ 5. pack
# the runs' records (no checkpoints), then the small runs' last weights without the
# optimizer state, one archive per run (each stays under 16 MB)
$PY - "$RUNS" <<'EOF'
import sys, pathlib, torch
for run in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    if not ckpts or run.name in ("mnist", "fashion_mnist"):
        continue
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    keep = {k: state[k] for k in ("model", "ema", "step") if k in state}
    (run / "weights").mkdir(exist_ok=True)
    torch.save(keep, run / "weights" / ckpts[-1].name)
EOF
tar -czf "$OUT/records.tgz" --exclude='checkpoints' --exclude='weights' -C runs gpu \
  gpu-logs
for run in $RUNS/*/weights; do  # one archive per run (each stays under 16 MB)
  run=$(basename "$(dirname "$run")")
  tar -czf "$OUT/weights-$run.tgz" -C runs "gpu/$run/weights"
done
ls -la "$OUT"
stamp "done"
for f in $RUNS/*/eval.json; do
  $PY -c "
import json, sys
for key, e in json.load(open('$f'))['entries'].items():
    print('$f'.split('/')[-2], {k: (round(v, 2) if isinstance(v, float) else v) for k, v in e.items()
          if k in ('sampler', 'steps', 'timestep_spacing', 'n', 'fid', 'floor', 'seconds', 'step')})"
done
