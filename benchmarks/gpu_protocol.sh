#!/usr/bin/env bash
# One prepared call on a lent GPU machine (under 9.5 minutes): the issue-14 batch throughput
# figure and as much of the evaluation protocol as fits, results to $OUT (the device tool's
# folder) or benchmarks/results/gpu_protocol/.
#
#   run(command="bash benchmarks/gpu_protocol.sh COMMIT", timeout_s=590)
#
# COMMIT: the commit of the working tree (the device copy's git metadata is stale), recorded in
# the protocol's meta.json. Steps, each under its own time limit:
#   1. devices (nvidia-smi, jax.devices());
#   2. bench_batch.py --n 64 --modes loop map: 64 patches of 128^2 as a loop of compiled runs
#      and as one lax.map program (issue 14's "64 patches <= 10 s"; vmap measured 3.9x slower on
#      16 patches, results/batch/batch_modes_gpu_16.json, so it is not timed again);
#   3. run_protocol.py benchmarks/protocols/dsb2018_v2.toml with a budget: seed-major cells,
#      rows appended per cell, so a cut run returns whole seeds. To continue the committed rows
#      instead of starting over, copy benchmarks/results/dsb2018_v2/{rows.jsonl,meta.json} into
#      $OUT first (finished cells are skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
commit="${1:-unknown}"
out="${OUT:-benchmarks/results/gpu_protocol}"
mkdir -p "$out"
t0=$SECONDS
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"
} 2>&1 | tee "$out/devices.txt"
timeout 110 python3 benchmarks/bench_batch.py --n 64 --modes loop map --out "$out" 2>&1 \
    | grep -v cuda_timer | tee "$out/batch.log"
left=$(( 545 - (SECONDS - t0) ))
echo "protocol: ${left} s left" | tee "$out/protocol.log"
cp benchmarks/results/dsb2018_v2/rows.jsonl benchmarks/results/dsb2018_v2/meta.json "$out"/ 2>/dev/null
timeout "$left" python3 benchmarks/run_protocol.py benchmarks/protocols/dsb2018_v2.toml \
    --out "$out" --budget $(( left - 75 )) --commit "$commit" 2>&1 | tee -a "$out/protocol.log"
echo "gpu_protocol: done after $(( SECONDS - t0 )) s"
