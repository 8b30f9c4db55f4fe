#!/usr/bin/env bash
# Compiles and runs every ```cpp block of docs/api.md (each one is a whole program) against an installed
# ellipse, through its pkg-config file, so that the tour cannot drift from the API. Exit status 0 when all
# compile without warnings and exit 0.
#   Usage: tools/check_api_docs.sh PREFIX   (where `cmake --install` put ellipse)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
prefix=${1:?usage: tools/check_api_docs.sh PREFIX}
pc=$(find "$prefix" -name ellipse.pc -print -quit)
[[ -n "$pc" ]] || { echo "check_api_docs: no ellipse.pc under $prefix" >&2; exit 1; }
flags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs ellipse)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk -v dir="$work" '
  /^```cpp$/ { n++; file = sprintf("%s/snippet%02d.cpp", dir, n); inside = 1; next }
  /^```$/ { inside = 0; next }
  inside { print > file }' docs/api.md
status=0
for source in "$work"/snippet*.cpp; do
  name=$(basename "$source" .cpp)
  # shellcheck disable=SC2086  # flags is a list of flags
  if ! g++ -std=c++20 -Wall -Wextra -Wpedantic -Werror -O1 "$source" -o "$work/$name" $flags; then
    echo "check_api_docs: $name (block $((10#${name#snippet})) of docs/api.md) does not compile" >&2
    status=1
    continue
  fi
  if ! (cd "$work" && OMP_WAIT_POLICY=passive "./$name" >"$name.out" 2>&1); then
    echo "check_api_docs: $name (block $((10#${name#snippet})) of docs/api.md) failed:" >&2
    cat "$work/$name.out" >&2
    status=1
  fi
done
echo "check_api_docs: $(ls "$work"/snippet*.cpp | wc -l) blocks checked, status $status"
exit $status
