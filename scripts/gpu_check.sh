#!/usr/bin/env bash
# The GPU check (issue "Run on GPUs"): the GPU test tier + the GPU benchmarks, one table, <= ~8 minutes
# on one H200. Runs megakd from this checkout with the torch already installed there (no pip install of
# megakd: setup.py pins a newer torch than GPU boxes may have).
#
#   bash scripts/gpu_check.sh --prepare   # on a machine with network, once: wheels into .whl/ (git-ignored)
#   bash scripts/gpu_check.sh             # on the GPU machine (no network): carry .whl/ along
#   bash scripts/gpu_check.sh --tiny      # the same pipeline at CPU sizes (a dry run; the GPU tier skips)
#
# The table goes to stdout and to $OUT/gpu_check.md ($OUT defaults to .gpu/out); exit 1 on any FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."
# Not on GPU boxes by default (../shared/GPU.md): megatron-core, the test runner, Liger for the loss bar.
WHEELS="megatron-core==0.16.1 liger-kernel psutil pytest pluggy iniconfig pytest-timeout"

if [[ "${1:-}" == "--prepare" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl $WHEELS
  ls .whl
  exit 0
fi

missing=$(python3 - <<'PY'
import importlib.util as u
print(" ".join(m for m in ("megatron", "pytest", "psutil") if u.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: $missing not installed and no .whl/ here; run 'bash scripts/gpu_check.sh --prepare' where pip reaches PyPI and carry .whl/" >&2
    exit 2
  fi
  site=/tmp/megakd_gpu_site
  python3 -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl || exit 2
  export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-$PWD/.gpu/out}"
exec python3 benchmarks/gpu_check.py --out "$OUT" "$@"
