# Sourced by bench/compare_*.sh from the repository root: sets $python to the PyTorch peer
# (.torch-venv/bin/python, made by tools/torch-venv.sh, or $PYTHON). The peer keeps libgomp's default of
# spinning idle workers unless a script asks otherwise: on a quiet machine that is PyTorch's fastest setting
# (gpt-s step 72 ms against 101 ms with OMP_WAIT_POLICY=passive on a 2-core Xeon), and ellipse's own
# thread pool spins too.
python=${PYTHON:-.torch-venv/bin/python}
if [[ ! -x "$python" ]]; then
  echo "$(basename "$0"): no PyTorch peer at $python; run 'bash tools/torch-venv.sh' first (or set PYTHON=...)" >&2
  exit 2
fi
unset OMP_WAIT_POLICY
