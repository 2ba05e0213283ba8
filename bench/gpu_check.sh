#!/usr/bin/env bash
# The GPU checks of issue 11, as one script to run once on a CUDA machine (never on the CPU):
# the gpu-marked tests, then the 512x512x300 synthetic CT through Hermes-R Base (15 tasks,
# overlap 0.5) against MONAI's pipeline, with the eager fp16 engine and with torch.compile +
# CUDA graphs. Prints the card, seconds per stage, ratios and effective TFLOP/s.
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; print('card:', torch.cuda.get_device_name(0))"
timeout 300 python -m pytest -m gpu -q -p no:warnings tests || echo "gpu tests failed"
for engine in torch compile; do
    timeout 600 python bench/segment_vs_monai.py --device cuda --preset hermes-r-base \
        --size 512 --patch 128 --overlap 0.5 --batch-size 4 --no-real --engine "$engine" \
        --monai-precision auto || echo "segment_vs_monai --engine $engine failed"
done
