#!/usr/bin/env bash
# The GPU paths, in one short run (by hand, on a machine with one CUDA GPU; results in
# benchmarks/README.md "GPU paths"): CUDA-event timing and torch.cuda.max_memory_allocated in
# `profile`, FlopCounterMode's counts of the CUDA kernels (SDPA's fused kernels are counted there,
# unlike on a CPU) for every tiny family, the nccl backend on one rank, the refusal of more ranks
# than GPUs, `calibrate --device cuda`, and `validate --timing` against the calibrated profile and
# the catalog's H200.
#
# From the repository root, with costmodel importable (`pip install -e '.[profile]'`, or
# PYTHONPATH=. where torch, click, pandas and fvcore are installed):
#
#   bash benchmarks/gpu_paths.sh OUTDIR [cuda|cpu]     # cpu: a dry run of the script itself
#   ONLY="families.txt calibrate.json" bash benchmarks/gpu_paths.sh OUTDIR   # just these steps
#
# Each step runs under its own timeout and the script goes on after a failure; everything lands
# in OUTDIR (log.txt, one file per step) and OUTDIR.tar.gz.
set -u
out=${1:?usage: gpu_paths.sh OUTDIR [cuda|cpu]}
dev=${2:-cuda}
mkdir -p "$out"
log="$out/log.txt"
cm() { python3 -c 'import sys; from reports.cli import main; sys.argv[0] = "costmodel"; main()' "$@"; }
step() {  # step NAME SECONDS command...: stdout to OUTDIR/NAME, stderr and the exit code to the log
  local name=$1 limit=$2; shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return
  local t0=$EPOCHREALTIME
  echo "=== $name: $*" >>"$log"
  timeout "$limit" bash -c '"$@"' step "$@" >"$out/$name" 2>>"$log"  # bash -c: cm is a function
  local rc=$?
  python3 -c "import sys; print(f'=== {sys.argv[1]}: exit {sys.argv[2]} in {float(sys.argv[4]) - float(sys.argv[3]):.1f} s')" \
    "$name" "$rc" "$t0" "$EPOCHREALTIME" >>"$log"
  { nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,pstate --format=csv,noheader; uptime; } >>"$log" 2>/dev/null
}
export -f cm
small=() big=(--batch 8 --prompt 2048) reps=3
[ "$dev" = cpu ] && small=(--quick) big=(--batch 1 --prompt 16) reps=1

step env.txt 60 bash -c 'nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv;
  python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"; uptime'

# 1. profile on the GPU: CUDA events, peak memory per phase, FLOPs counted on CUDA kernels
step profile_tiny_llama.json 90 cm profile tiny-llama --device "$dev" --batch 2 --prompt 8 --gen 4 --repeat 3 --format json
step profile_tiny_gpt2_eager.txt 90 cm profile tiny-gpt2 --device "$dev" --attention eager --prompt 8 --gen 3 --repeat 3
# 2. every tiny family counted on the GPU, both attention paths, in one process
step families.txt 150 python3 -c "
import time
from costmodel.models import get_model, preset_names
from costmodel.spec import Workload
from profiler.runner import count
for name in [m for m in preset_names() if m.startswith('tiny-')]:
    for attention in ('sdpa', 'eager'):
        t0 = time.perf_counter()
        try:
            c = count(get_model(name), Workload(batch=2, prompt=8, gen=3), attention=attention, device='$dev')
            bad = [m.to_dict() for m in c.mismatches][:3]
            print(name, attention, 'match' if c.ok else 'MISMATCH', len(c.mismatches), bad,
                  'uncounted:', c.uncounted_matmul_ops(), f'{time.perf_counter() - t0:.2f} s', flush=True)
        except Exception as e:
            print(name, attention, 'FAILED', type(e).__name__, str(e).splitlines()[0][:300], flush=True)
"
# 3. a 1.2 B model in bf16 at the README's prefill shape: 8 x 2048
step profile_llama_3_2_1b.json 180 cm profile llama-3.2-1b --device "$dev" --dtype bf16 "${big[@]}" --gen 4 \
  --repeat 3 --no-fvcore --format json
# 4. nccl on one rank (the only world one GPU holds), then more ranks than GPUs: one line, exit 2
step nccl_world1.txt 120 python3 -c "
from costmodel import get_model
from costmodel.spec import Workload
from costmodel.parallel import Split
from profiler.parallel import run_parallel
r = run_parallel(get_model('tiny-llama'), Workload(batch=2, prompt=8, gen=4), Split(tp=1, pp=1), device='$dev')
d = r.to_dict(); print(d['backend'], d['device'], 'ok' if d['ok'] else 'NOT OK', d['mismatches'], d['seconds'])"
step tp2_refused.txt 60 bash -c "cm profile tiny-llama --device $dev --tp 2 --prompt 8 --gen 3 --repeat 1 2>&1; echo exit \$?"
# 5. calibrate the GPU, then validate --timing against it and against the catalog's H200
step calibrate.json 150 cm calibrate --device "$dev" "${small[@]}" --out "$out/profile.json" --format json
step validate_timing_calibrated.json 90 cm validate --timing --device "$dev" --hardware "$out/profile.json" --repeat $reps \
  --max-error 100 --format json
[ "$dev" = cuda ] && step validate_timing_h200.json 120 cm validate --timing --device cuda --gpu h200 --repeat 3 \
  --max-error 100 --format json
# the same validation again (process to process, the host-bound eager passes move), then with an op table
step validate_timing_calibrated_again.json 90 cm validate --timing --device "$dev" --hardware "$out/profile.json" \
  --repeat $reps --max-error 100 --format json
step calibrate_table.json 150 cm calibrate --device "$dev" "${small[@]}" --dtype fp32 --model timing-llama-21m \
  --out "$out/profile_table.json" --format json
step validate_timing_table.json 90 cm validate --timing --device "$dev" --hardware "$out/profile_table.json" \
  --repeat $reps --max-error 100 --format json
tar -czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
cat "$log"
