#!/usr/bin/env bash
# The benchmark harness (see BENCHMARKS.md): one command, on a fresh machine too. It needs
# flock(1) (util-linux) and measures the release build; `--write` updates BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v flock >/dev/null || { echo "bench: flock(1) is missing (util-linux)" >&2; exit 1; }
exec cargo bench --bench harness -- "$@"
