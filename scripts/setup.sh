#!/usr/bin/env bash
# Install what strata needs from Debian's packages. Safe to run again: it installs only what is
# missing, so a second run downloads nothing.
#   bash scripts/setup.sh        everything (build, main job and tests)
#   bash scripts/setup.sh main   only what the build and the main job need (no PyTorch, no pytest)
set -euo pipefail
what=${1:-all}

pkgs=(
  g++ cmake make pkg-config ninja-build
  libopenblas-dev libopenblas0-openmp libomp-dev
  libdnnl-dev  # oneDNN: the bf16 GEMMs
  libsentencepiece-dev sentencepiece
  nlohmann-json3-dev libcli11-dev libgtest-dev libxxhash-dev
  python3 python3-dev python3-numpy pybind11-dev
  python3-matplotlib  # strata plot
  bible-kjv fortunes dict-devil
)
if [ "$what" != main ]; then
  pkgs+=(python3-torch python3-pytest)  # the PyTorch reference and the Python tests
  pkgs+=(python3-venv python3-pip)      # tests/python/test_install.py: pip install . into a fresh venv
  pkgs+=(python3-sentencepiece)         # tests/interop: transformers' LlamaTokenizer on the exported tokenizer
  # clang and its compiler-rt runtimes (libFuzzer, ASan, UBSan) build the fuzzers (scripts/fuzz.sh); g++
  # brings its own ASan/UBSan runtimes for the sanitizer build (scripts/sanitize.sh).
  pkgs+=(clang libclang-rt-14-dev)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
