#!/usr/bin/env bash
# Set up .venv at the repo root with everything the pipeline and the tests need.
#   bash install.sh          # CPU build of torch 2.13.0 (default; what CI uses)
#   bash install.sh --cuda   # CUDA build of torch from the PyTorch index (a GPU node)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
cuda=0
for a in "$@"; do
  case "$a" in
    --cuda) cuda=1 ;;
    -h|--help) sed -n 2,4p "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$cuda" = 1 ]; then
  .venv/bin/python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
fi
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .   # the modcomp package (editable: the checkout is the code)
.venv/bin/python -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
