#!/usr/bin/env bash
# Install megakd and its requirements into the current Python environment (idempotent).
# torch is pinned first: on CPU machines torch==2.13.0 is a local CPU build, while an unpinned
# torch would pull a multi-GB CUDA build. In the GPU container (Dockerfile) torch is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install -q --disable-pip-version-check"
if ! python -c "import torch" 2>/dev/null; then
  $PIP torch==2.13.0
fi
$PIP -e ".[test,launch]"
