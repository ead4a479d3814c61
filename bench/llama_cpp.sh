#!/usr/bin/env bash
# Builds llama.cpp for bench/llama_cpp.py: its source is the copy vendored in the PyPI sdist of
# llama-cpp-python (pinned below, so every run measures the same llama.cpp), built here with the
# machine's instruction set (GGML_NATIVE), its llama-bench, and bench/llama_greedy.cpp against its
# library. Then runs bench/llama_cpp.py with the arguments given. Idempotent: a second run reuses
# the build in bench/.llama.cpp/.
#   bash bench/llama_cpp.sh [--reps 10] [--markdown-out bench/results/llama-cpp-DATE.md]
#   bash bench/llama_cpp.sh --build-only
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36  # llama-cpp-python, whose vendor/llama.cpp is the source
work=bench/.llama.cpp
src=$work/llama-cpp-python-$version/vendor/llama.cpp
build=$work/build
bash bench/setup.sh  # bench/.venv (PyPI torch, transformers, gguf)
if [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama_greedy" ]; then
  mkdir -p "$work"
  if [ ! -d "$src" ]; then
    bench/.venv/bin/python -m pip download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
    tar -C "$work" -xzf "$work/llama_cpp_python-$version.tar.gz"
    mv "$work/llama_cpp_python-$version" "$work/llama-cpp-python-$version"
  fi
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=ON >/dev/null
  cmake --build "$build" --target llama-bench llama -j"$(nproc)" >/dev/null
  g++ -O2 -std=c++17 bench/llama_greedy.cpp -I"$src/include" -I"$src/ggml/include" -L"$build/bin" -lllama \
      -Wl,-rpath,"$(cd "$build/bin" && pwd)" -o "$build/bin/llama_greedy"
fi
[ "${1:-}" = --build-only ] && exit 0
cmake --build build --target strata strata_py >/dev/null
exec bench/.venv/bin/python bench/llama_cpp.py --llama-bin "$build/bin" "$@"
