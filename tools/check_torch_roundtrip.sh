#!/usr/bin/env bash
# PyTorch round trip of GPT checkpoints, both ways (see tools/check_torch_roundtrip.py): ellipse trains and
# PyTorch loads, PyTorch trains and ellipse loads; logits and losses must agree to 1e-5 relative. Needs
# build/ellipse and Debian's python3-torch. Usage (from anywhere):
#   tools/check_torch_roundtrip.sh        TEXT=path STEPS=n TOLERANCE=x to change the defaults
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec /usr/bin/python3 tools/check_torch_roundtrip.py --ellipse build/ellipse --text "${TEXT:-../shared/data/tinyshakespeare.txt}" \
  --steps "${STEPS:-10}" --tolerance "${TOLERANCE:-1e-5}"
