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
#   2. bench_batch.py --n 64: segment_batch of 64 patches of 128^2 vs 64 segment calls;
#   3. run_protocol.py benchmarks/protocols/dsb2018_v2.toml with a budget: seed-major cells,
#      rows appended per cell, so a cut run returns whole seeds (resume it later where it stopped).
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
timeout 110 python3 benchmarks/bench_batch.py --n 64 --out "$out" 2>&1 | tail -5 | tee "$out/batch.log"
left=$(( 545 - (SECONDS - t0) ))
echo "protocol: ${left} s left" | tee "$out/protocol.log"
timeout "$left" python3 benchmarks/run_protocol.py benchmarks/protocols/dsb2018_v2.toml \
    --out "$out" --budget $(( left - 75 )) --commit "$commit" 2>&1 | tee -a "$out/protocol.log"
echo "gpu_protocol: done after $(( SECONDS - t0 )) s"
