#!/usr/bin/env bash
# Set up the environment (cached) and run the demo on the bundled data and backbone.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/scripts/env.sh")
HF_HUB_OFFLINE=1 exec "$venv/bin/skaudio-confit" demo "$@"
