# Sourced by bench/compare_*.sh from the repository root: sets $python to the PyTorch peer
# (.torch-venv/bin/python, made by tools/torch-venv.sh, or $PYTHON) and gives both sides sleeping idle OpenMP
# workers (OMP_WAIT_POLICY=passive, which the ellipse program sets for itself; libgomp's spinning default
# slows PyTorch on a busy machine).
python=${PYTHON:-.torch-venv/bin/python}
if [[ ! -x "$python" ]]; then
  echo "$(basename "$0"): no PyTorch peer at $python; run 'bash tools/torch-venv.sh' first (or set PYTHON=...)" >&2
  exit 2
fi
export OMP_WAIT_POLICY=passive
