#!/usr/bin/env bash
# PyTorch parity of GPT checkpoints: trains a short run for each of standard, elliptical/causal and
# elliptical/sequence attention (or takes existing run directories as arguments), evaluates each with
# `ellipse eval gpt`, and has tools/check_torch_parity.py load the same checkpoint into the PyTorch peer
# (bench/torch_models.py) and compare the val loss (1e-4 relative). Needs build/ellipse and Debian's
# python3-torch. Usage (from the repository root):
#   tools/check_gpt_parity.sh [RUN_DIR ...]        TEXT=path STEPS=n to change the defaults
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
text=${TEXT:-../shared/data/tinyshakespeare.txt}
steps=${STEPS:-50}
runs=("$@")
if ((${#runs[@]} == 0)); then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  for spec in standard elliptical:causal elliptical:sequence; do
    attn=${spec%%:*}
    mode=${spec#*:}
    dir=$scratch/${spec/:/-}
    flags=(--attn "$attn")
    [[ $spec == *:* ]] && flags+=(--m-mode "$mode")
    build/ellipse train gpt --text "$text" "${flags[@]}" --steps "$steps" --eval-every "$steps" --out "$dir" >/dev/null
    runs+=("$dir")
  done
fi
status=0
for dir in "${runs[@]}"; do
  val=$(build/ellipse eval gpt --model "$dir" --text "$text" | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["val_loss"])')
  /usr/bin/python3 tools/check_torch_parity.py --model "$dir" --text "$text" --ellipse-val-loss "$val" || status=1
done
exit $status
