#!/usr/bin/env bash
# The GPU figures in one command, for a machine with one CUDA GPU and the
# project installed (torch with CUDA, the default model):
#
#   bash benchmarks/gpu_figures.sh [tests|scaling|decoding|accuracy ...]
#
# tests:    the GPU tests (training on the GPU, the memory's blocks in CPU
#           RAM with a GPU cache, outputs equal to the CPU's);
# scaling:  the InfLLM memory against doc length, up to 131,072 tokens, with
#           torch's peak GPU memory (long_memory_gpu_scaling.*);
# decoding: PaDeLLM and the autoregressive baseline on the torch backend on
#           the GPU, CoNLL-03 dev 500-799 (decoding_gpu.*);
# accuracy: docs of 1,000 consecutive dev sentences (lines 500-1499),
#           sentences vs. sinks + window vs. InfLLM (long_memory_gpu_accuracy.*).
#
# Each part has a time limit (seconds, from the environment: TESTS_S,
# SCALING_S, DECODING_S, ACCURACY_S) so that one slow part cannot take the
# others' time; a part that fails or runs out is reported and the next one
# runs. Results go to RESULTS (default benchmarks/results), logs to LOGS.
set -u
DATA=${DATA:-../shared/data/conll03/dev.jsonl}
RESULTS=${RESULTS:-benchmarks/results}
LOGS=${LOGS:-$RESULTS/gpu_logs}
PY=${PYTHON:-python}
mkdir -p "$RESULTS" "$LOGS"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests scaling decoding accuracy)

run_part() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*"
  local started=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$LOGS/$name.log"
  echo "== $name: exit $rc after $((SECONDS - started)) s"
}

for part in "${parts[@]}"; do
  case $part in
    tests) run_part tests "${TESTS_S:-240}" $PY -m pytest -q -p no:cacheprovider \
             tests/models/test_memory_gpu.py tests/training/test_gpu.py ;;
    scaling) run_part scaling "${SCALING_S:-400}" $PY benchmarks/long_memory.py scaling --gpu --data "$DATA" \
               --lengths 2048,8192,32768,131072 --max-seconds "${MAX_STREAM_S:-120}" --out "$RESULTS/long_memory_gpu" ;;
    decoding) run_part decoding "${DECODING_S:-600}" $PY benchmarks/decoding.py "$DATA" --skip 500 --limit 300 --gpu \
                --profile-docs 20 --out "$RESULTS/decoding_gpu" ;;
    accuracy) run_part accuracy "${ACCURACY_S:-600}" $PY benchmarks/long_memory.py accuracy "$DATA" --gpu \
                --lines 500:1500 --sizes 1000 --methods "(a),(c),(d)" --out "$RESULTS/long_memory_gpu" ;;
    *) echo "unknown part: $part (tests, scaling, decoding, accuracy)"; exit 2 ;;
  esac
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null
