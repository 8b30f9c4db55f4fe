#!/usr/bin/env bash
# Installs the Debian 12 packages that ellipse builds, tests and runs with, then the Python package's build and test
# requirements (nanobind, scikit-build-core, NumPy, pytest, matplotlib: PyPI) into the repository's venv .py-venv/,
# where CMake looks for them (python/CMakeLists.txt); run it as root from anywhere. Idempotent: it asks dpkg what is already
# installed and the venv what it already has, and only touches apt and pip when something is missing, so on a
# machine that has everything it returns in well under a second.
set -euo pipefail

packages=(
  build-essential        # g++ 12, make
  cmake                  # 3.25
  libopenblas-dev        # BLAS (GEMM) for the CPU backend
  libopenblas-openmp-dev # its OpenMP build, which CMakeLists.txt links (one thread pool with our loops)
  doctest-dev            # the test framework
  libcli11-dev           # the command-line program's argument parsing
  nlohmann-json3-dev     # JSON: safetensors headers, the GPT's config.json and metrics
  libfmt-dev             # error messages and printing
  libstb-dev             # PNG writing (study/figures.cpp)
  zlib1g-dev             # gzip: Fashion-MNIST's .gz files; decoding PNGs in tests/test_figures
  dataset-fashion-mnist  # the ViT's data set, under /usr/share/datasets/fashion-mnist
  libopenmpi-dev         # MPI for multi-process training (ELLIPSE_MPI) ...
  openmpi-bin            # ... and mpirun, which the multi-process tests run under
  clang                  # the fuzz build (ELLIPSE_FUZZ=ON) ...
  libclang-rt-14-dev     # ... its libFuzzer and sanitizer runtimes ...
  libomp-14-dev          # ... and clang's OpenMP runtime
  valgrind               # CI's memcheck of a short training run
  python3-dev            # the Python package (python/): Python's headers ...
  python3-venv           # ... and venv with pip, for .py-venv/
)
venv=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.py-venv
python_requirements=(nanobind scikit-build-core numpy pytest matplotlib)

# The venv, once the Debian packages are in: created when absent, filled when a requirement is missing.
python_venv() {
  local check="import importlib.util as u, sys
names = ('nanobind', 'scikit_build_core', 'numpy', 'pytest', 'matplotlib')
sys.exit(any(u.find_spec(name) is None for name in names))"
  if "$venv/bin/python" -c "$check" 2>/dev/null; then
    return 0
  fi
  echo "bootstrap: installing ${python_requirements[*]} into $venv"
  [[ -x "$venv/bin/python" ]] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${python_requirements[@]}"
}

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  echo "bootstrap: all ${#packages[@]} packages are installed"
  python_venv
  exit 0
fi

echo "bootstrap: installing ${missing[*]}"
as_root=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || { echo "bootstrap: run me as root (missing: ${missing[*]})" >&2; exit 1; }
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
python_venv
echo "bootstrap: done"
