#!/usr/bin/env bash
# Set up the environment (cached) and build the documentation site, warnings as errors.
# The benchmark plots are copied in from benchmarks/results/ (their one source).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/scripts/env.sh")
cd "$root"
mkdir -p docs/assets/benchmarks
cp benchmarks/results/*.png docs/assets/benchmarks/ 2>/dev/null || true
NO_MKDOCS_2_WARNING=1 "$venv/bin/python" -m mkdocs build --strict --site-dir "${SITE_DIR:-site}" "$@"
