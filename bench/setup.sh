#!/usr/bin/env bash
# Creates bench/.venv with PyTorch 2.x (from PyPI) and numpy, for the PyTorch peer of
# `strata bench train`, and transformers and gguf for bench/llama_cpp.py (the Qwen3 check needs a
# transformers that needs torch 2). Idempotent: does nothing when the venv already imports them all.
#
#   bash bench/setup.sh            # uses python3 from PATH
#   PYTHON=/usr/bin/python3 bash bench/setup.sh
#
# Note: PyPI's Linux x86_64 torch wheel depends on the CUDA runtime wheels (nvidia-*, a few GB).
# They are never loaded on a CPU-only machine but pip installs them all the same.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
py="${PYTHON:-python3}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import torch, numpy, transformers, gguf' >/dev/null 2>&1; then
    echo "bench/setup.sh: $venv already has torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
    exit 0
fi

if ! command -v "$py" >/dev/null 2>&1; then
    echo "bench/setup.sh: $py not found; install python3 (Debian: apt-get install python3)" >&2
    exit 1
fi

# Debian splits venv/ensurepip into python3-venv.
if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench/setup.sh: installing python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    else
        echo "bench/setup.sh: $py lacks the venv module; install python3-venv (as root: apt-get install python3-venv)" >&2
        exit 1
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet 'torch>=2.0,<3' numpy 'transformers>=4.51,<5' gguf
"$venv/bin/python" -c 'import torch, numpy; print("bench/setup.sh: torch", torch.__version__, "numpy", numpy.__version__)'
