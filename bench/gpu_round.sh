#!/usr/bin/env bash
# One round on a lent GPU machine, in one call from anywhere in the repository: build and install
# fastrnn (the machine reaches no package index), run the tests marked cuda, then the GPU benchmark
# (fastrnn.torch against torch.nn/cuDNN). Logs, gpu.json and gpu.md go to $OUT, else bench/out.
# Arguments go to the benchmark (e.g. --suite gpu-quick: the last --suite wins).
set -u
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
start=$SECONDS

python -m pip install --no-build-isolation -q . 2>&1 | tee "$out/install.log"
install=${PIPESTATUS[0]}
echo "== install: exit $install ($((SECONDS - start)) s)"
[ "$install" -eq 0 ] || exit "$install"

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
  --format=csv 2>&1 | tee "$out/nvidia-smi.txt"

python -m pytest -q -m cuda tests 2>&1 | tee "$out/pytest-cuda.log"
tests=${PIPESTATUS[0]}  # 5: no test carries the cuda mark
echo "== tests -m cuda: exit $tests ($((SECONDS - start)) s)"

python -m fastrnn.bench --device cuda --suite gpu --json "$out/gpu.json" \
  --markdown "$out/gpu.md" "$@" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
echo "== bench: exit $bench ($((SECONDS - start)) s); results in $out"

[ "$tests" -eq 0 ] || [ "$tests" -eq 5 ] || exit "$tests"
exit "$bench"
