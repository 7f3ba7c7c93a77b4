#!/usr/bin/env bash
# Installs kdlab and what it needs into ./.venv:
#  - Debian's dataset-fashion-mnist (the embedded default data set) where apt-get is available;
#  - the package with its [dev] extras (pytest, ruff, tensorboard, timm, mkdocs) into a virtual environment.
# Safe to run again. Set KDLAB_SKIP_APT=1 to skip the Debian package.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${KDLAB_SKIP_APT:-0}" != 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
    && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e '.[dev]'
echo "kdlab installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
