"""Small helpers shared by the benchmark scripts: machine, results folder, output files."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def now():
    """The current local time, ISO 8601 with the UTC offset, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def cpu_name():
    """The CPU model, from /proc/cpuinfo where there is one, else platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device=None):
    """What the results were measured on: platform, CPU, library versions, GPU if used."""
    import sklearn
    import torch

    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def jsonable(value):
    """``value`` with numpy scalars/arrays as Python values and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path, data):
    """Write ``data`` as strict JSON (no NaN), indented; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path


def write_text(path, text):
    """Write ``text`` (e.g. markdown), ending in one newline; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    return path


def markdown_table(header, rows, align=None):
    """A GitHub markdown table; ``align`` holds "l" or "r" per column (default: l, r...)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def code_state(root=None):
    """Which code was measured: git commit, whether the tree had uncommitted changes,
    and a SHA-256 over the package's source files as they were read at the start.

    The package may be edited while a long benchmark runs; the digest identifies the
    sources the run imported (take it before importing anything else heavy).
    """
    import hashlib
    import subprocess

    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    state = {}
    try:
        state["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
            check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "skaudio_confit"], cwd=root,
            capture_output=True, text=True, check=True, timeout=10).stdout
        state["package_uncommitted_changes"] = bool(dirty.strip())
    except (OSError, subprocess.SubprocessError):
        state["commit"] = None
    digest = hashlib.sha256()
    for path in sorted((root / "skaudio_confit").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    state["package_sha256"] = digest.hexdigest()
    return state


def set_threads(n):
    """``torch.set_num_threads(n)`` when ``n`` is given (on a shared, oversubscribed
    CPU one thread per process is often faster than several that spin-wait)."""
    if n:
        import torch

        torch.set_num_threads(int(n))
