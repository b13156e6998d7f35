#!/usr/bin/env bash
# Set up (once) the virtual environment for this checkout and print its path.
#
# The heavy part (torch, transformers, ...) lives outside the checkout, in a cache
# keyed by a hash of the dependency spec in pyproject.toml and the Python version, so
# a fresh clone reuses it and a changed dependency list builds a new one. The package
# itself is then installed in editable mode from this checkout (seconds).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
cache=${SKAUDIO_CONFIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skaudio-confit}

# Dependency spec: runtime + test extras, one requirement per line.
deps=$("$python" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
PY
)
key=$( { "$python" -c 'import sys; print(sys.version_info[:2])'; echo "$deps"; } | sha256sum | cut -c1-16)
venv="$cache/venv-$key"

if [ ! -f "$venv/.complete" ]; then
    echo "Setting up $venv (first run only; torch is large, this takes a few minutes)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip "setuptools>=68" wheel >&2
    # torch and torchaudio first, as a matching pair, then everything else.
    echo "$deps" | grep -E '^torch(audio)?[=<>~ ]' > "$venv/torch-requirements.txt"
    "$venv/bin/python" -m pip install -q -r "$venv/torch-requirements.txt" >&2
    echo "$deps" > "$venv/requirements.txt"
    "$venv/bin/python" -m pip install -q -r "$venv/requirements.txt" >&2
    touch "$venv/.complete"
fi
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" >&2
echo "$venv"
