#!/usr/bin/env bash
# Install, then run the whole test suite (CPU, ~15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m pytest tests "$@"
