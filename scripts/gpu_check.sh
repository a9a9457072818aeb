#!/usr/bin/env bash
# GPU check of the distributed training loop (zoo/train/loop.py), for whenever a CUDA machine is at hand.
# From the repository root:   bash scripts/gpu_check.sh          (MINUTES=1 BATCH=256 GPUS=<all> by default)
#  1. the GPU has bf16 and zoo.train picks it (--mixed-precision auto);
#  2. ldm-seg-kl (the recipe's full-size U-Net, random autoencoder) trains for MINUTES on 1 GPU, then data
#     parallel on all GPUS (accelerate launch --config_file configs/accelerate/gpus.yaml, NCCL), the same global
#     batch; the bench prints samples/s for each and the scaling, timed from the runs' own log.jsonl;
#  3. the 2-process gloo tests still pass on this machine's CPU.
# Until this has run somewhere, README says GPU scaling is untested.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch

assert torch.cuda.is_available(), "no CUDA GPU: this check is for GPU machines (the CPU is covered by the tests)"
assert torch.cuda.is_bf16_supported(), f"{torch.cuda.get_device_name(0)} has no bf16"
print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY
gpus=${GPUS:-$(python -c "import torch; print(torch.cuda.device_count())")}
counts=1
if [ "$gpus" -gt 1 ]; then counts="1 $gpus"; fi
python -m zoo.bench train --processes $counts --batch "${BATCH:-256}" --steps 1000000 --log-every 20 \
    --samples 8192 --max-minutes "${MINUTES:-1}"
python -m pytest tests/test_distributed.py -q
