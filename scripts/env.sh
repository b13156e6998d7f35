#!/usr/bin/env bash
# Set up (once) the Python environment of this checkout and print its path.
#
# Two layers:
# - the heavy dependencies (torch, transformers, ...) live in a shared virtual
#   environment outside the checkout, in a cache keyed by a hash of the dependency spec
#   in pyproject.toml and the Python version, so every clone reuses it and a changed
#   dependency list builds a new one. Nothing of any checkout is installed into it;
# - this checkout's own environment, .venv/ (seconds to make, no pip): a bare virtual
#   environment whose one .pth file puts this checkout first on sys.path, then the
#   shared environment's site-packages. Two checkouts (a CI clone beside a working
#   tree) can run at once, each importing its own code.
# A second run only checks both layers and prints nothing but the path.
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
shared="$cache/venv-$key"

if [ ! -f "$shared/.complete" ]; then
    echo "Setting up $shared (first run only; torch is large, this takes a few minutes)" >&2
    rm -rf "$shared"
    mkdir -p "$cache"
    "$python" -m venv "$shared"
    "$shared/bin/python" -m pip install -q --upgrade pip "setuptools>=77" wheel >&2
    # torch and torchaudio first, as a matching pair, then everything else.
    echo "$deps" | grep -E '^torch(audio)?[=<>~ ]' > "$shared/torch-requirements.txt"
    "$shared/bin/python" -m pip install -q -r "$shared/torch-requirements.txt" >&2
    echo "$deps" > "$shared/requirements.txt"
    "$shared/bin/python" -m pip install -q -r "$shared/requirements.txt" >&2
    touch "$shared/.complete"
fi

layer="$root/.venv"
stamp="$shared
$root"
if [ ! -f "$layer/.skaudio-confit-layer" ] || [ "$(cat "$layer/.skaudio-confit-layer")" != "$stamp" ]; then
    rm -rf "$layer"
    "$shared/bin/python" -m venv --without-pip "$layer"
    shared_site=$("$shared/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    layer_site=$("$layer/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    # .pth lines run in order: this checkout goes on sys.path before the shared
    # site-packages (and before whatever package install that one may hold).
    printf '%s\nimport site; site.addsitedir(%s)\n' "$root" "'$shared_site'" \
        > "$layer_site/_skaudio_confit_checkout.pth"
    # The command line, as an installed console script would be.
    printf '#!%s\nimport sys\nfrom skaudio_confit.cli import main\nsys.exit(main())\n' \
        "$layer/bin/python" > "$layer/bin/skaudio-confit"
    chmod +x "$layer/bin/skaudio-confit"
    echo "$stamp" > "$layer/.skaudio-confit-layer"
fi
echo "$layer"
