#!/usr/bin/env bash
# Creates (or reuses) the benchmarking peer: a virtual environment with a current PyTorch 2.x from PyPI, in
# the git-ignored folder .torch-venv/ at the repository root, and prints its python's path last.
#
#   bash tools/torch-venv.sh            # about 5 GB: PyPI's Linux wheel pulls its CUDA libraries too
#   PYTHON=$(bash tools/torch-venv.sh | tail -n 1) bench/compare_torch.sh
#
# PyTorch is never a dependency of the library, its tests or CI: this environment serves bench/ only. The
# parity tools (tools/check_*) keep Debian's python3-torch, which is enough to compare numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.torch-venv
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  echo "torch-venv: installing torch and numpy from PyPI into $venv/ (about 5 GB)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet torch numpy
fi
"$venv/bin/python" - <<'PY' >&2
import torch
print(f"torch-venv: torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
      f"MKL {torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}")
PY
echo "$PWD/$venv/bin/python"
