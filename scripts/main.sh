#!/usr/bin/env bash
# The main job: install, build, fetch the default corpus, train the default model (resuming if a
# checkpoint exists), then evaluate it and generate a sample.
#   STRATA_CONFIG  config file (default configs/default.json)
#   STRATA_OUT     run directory (default runs/default)
# Extra arguments go to `strata train` (e.g. --set train.steps=50). Safe to run again: nothing that
# is already done is redone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh main
bash scripts/build.sh
bash scripts/get_corpus.sh
config=${STRATA_CONFIG:-configs/default.json}
out=${STRATA_OUT:-runs/default}
./build/strata train -c "$config" --set "train.out_dir=$out" "$@"
./build/strata eval --ckpt "$out"
echo "--- sample ---"
./build/strata generate --ckpt "$out" --prompt "And it came to pass" --max-tokens 120 --temperature 0.8 --top-k 40 --seed 7
