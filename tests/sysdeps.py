"""System programs some tests need, installed by scripts/install-system-deps.sh on demand."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-system-deps.sh"


@functools.cache
def ensure(program: str, package: str) -> tuple[str | None, str]:
    """(the program's path, "") once it is installed, or (None, why it is not)."""
    found = shutil.which(program)
    if found:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, f"{program} is missing: run scripts/install-system-deps.sh {package} as root"
    proc = subprocess.run([str(SCRIPT), package], capture_output=True, text=True, timeout=900)
    found = shutil.which(program)
    if found is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return None, f"installing {package} failed: {' '.join(tail)}"
    return found, ""
