#!/usr/bin/env bash
# On a Linux machine with an NVIDIA GPU and a Vulkan loader: runs the bench example and, where
# PyTorch with CUDA is installed, PyTorch's F.layer_norm / F.batch_norm on the same shapes, so
# BENCHMARKS.md can give both tables from one run on one card.
#
# usage: scripts/gpu-bench.sh [OUT_DIR] [BENCH_BINARY]
#   BENCH_BINARY defaults to target/release/examples/bench (built here if cargo exists).
set -euo pipefail
out=${1:-bench-out}
bin=${2:-target/release/examples/bench}
mkdir -p "$out"
if [ ! -x "$bin" ]; then
    cargo build --release --example bench
fi
# The NVIDIA driver's Vulkan ICD, where the loader does not find it by itself.
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt" || true
WGPU_BACKEND=${WGPU_BACKEND:-vulkan} "$bin" --json "$out/fused-norm.json" | tee "$out/fused-norm.md"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    python3 "$(dirname "$0")/torch_norm_bench.py" --json "$out/torch.json" | tee "$out/torch.md"
else
    echo "PyTorch with CUDA not found: skipping the PyTorch table" | tee "$out/torch.md"
fi
