#!/usr/bin/env bash
# Prints `<package>/cuda` for every package in the repository that declares a `cuda` feature,
# comma-separated, for `cargo check --workspace --features "$(scripts/cuda-features.sh)"`.
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
for manifest in crates/*/Cargo.toml examples/*/Cargo.toml benches/Cargo.toml; do
  [ -f "$manifest" ] || continue
  grep -q '^cuda *=' "$manifest" || continue
  name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n 1)
  features+=("$name/cuda")
done
(IFS=,; echo "${features[*]}")
