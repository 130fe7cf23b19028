#!/usr/bin/env bash
# The prepared GPU check: one short call on a lent GPU machine (under 8 minutes), writing JSON
# (and a plot) to $OUT (the device tool's folder) or benchmarks/results/gpu/.
#
#   run(command="bash benchmarks/gpu_suite.sh", timeout_s=540)
#
# The machine's image has JAX with CUDA, Flax, Optax, tifffile, scikit-image and matplotlib but
# not this package: it runs from the source tree (PYTHONPATH). Steps:
#   1. the devices JAX sees and nvidia-smi's view of them;
#   2. bench_scaling on 128^2 (the comparison patch), 512^2 and 2048^2 (mirror-tiled sample):
#      default config (backend policy: XLA convolutions, vmapped experts, larger crop batches)
#      and the full-image training mode up to 512^2, and the bundled 3-D stack — cold and warm
#      times, phases, Dice (each run in its own process, 150 s at most);
#   3. the cost of an Adam step against crops per step and images vmapped (bench_step_batching:
#      on a GPU a step is mostly launch overhead, so this says how far batching can go there);
#   4. segment_batch on 64 patches of 128^2 against 64 segment calls (bench_batch.py).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"
} 2>&1 | tee "$out/devices.txt"
timeout 360 python3 benchmarks/bench_scaling.py --sizes 512 2048 --methods default full \
    --full-max-size 512 --volume --timeout 150 --out "$out" 2>&1 | tee "$out/scaling.log"
timeout 60 python3 benchmarks/bench_step_batching.py --steps 50 --crop-batches 2 16 64 \
    --images 1 16 --out "$out" 2>&1 | tail -3 | tee "$out/step_batching.log"
timeout 100 python3 benchmarks/bench_batch.py --n 64 --out "$out" 2>&1 | tail -3 | tee "$out/batch.log"
echo "gpu_suite: done (exit $?)"
