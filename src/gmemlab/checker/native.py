"""The compiled exploration core (csearch.c): built with the system's C compiler
on first use, cached, and loaded with ctypes.

The C source ships with the package and is the only thing compiled: the
library is built from it with `$CC` (or gcc, or cc) into a cache directory
(`$GMEMLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/gmemlab`, else
`~/.cache/gmemlab`), named by a hash of the source, the flags and the
compiler, so an edited source or another compiler builds a new one and a
stale library is never loaded.  Without a compiler (or when the build fails)
`load()` says why, and the checker explores with the Python engine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).with_name("csearch.c")
CFLAGS = ("-O2", "-std=gnu11", "-shared", "-fPIC")


@dataclass(frozen=True)
class Native:
    """The loaded core, or why there is none."""

    lib: ctypes.CDLL | None
    why_not: str = ""
    path: str = ""


def compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("cc")


def cache_dir() -> Path:
    explicit = os.environ.get("GMEMLAB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gmemlab"


@cache
def load() -> Native:
    """The compiled core, built if needed (once per process)."""
    cc = compiler()
    if cc is None:
        return Native(None, "no C compiler (gcc or cc, or $CC) found")
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        return Native(None, f"cannot read {SOURCE}: {exc.strerror}")
    tag = hashlib.sha256(b"\0".join([source, " ".join(CFLAGS).encode(), cc.encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    for where in (cache_dir(), Path(tempfile.gettempdir()) / f"gmemlab-{os.getuid()}"):
        path = where / f"csearch-{tag}.so"
        if not path.exists():
            why = _build(cc, where, path)
            if why:
                if "cannot write" in why:
                    continue  # try the next directory
                return Native(None, why)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            return Native(None, f"cannot load {path}: {exc}")
        _declare(lib)
        return Native(lib, path=str(path))
    return Native(None, "no writable cache directory for the compiled core")


def _build(cc: str, where: Path, path: Path) -> str:
    """Compile the core to path (atomically: other processes may build it too);
    an empty string, or why it failed."""
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".so.tmp", dir=where)
        os.close(fd)
    except OSError as exc:
        return f"cannot write {where}: {exc.strerror}"
    try:
        # The first check after an install or an upgrade waits for this: say so.
        from rich.console import Console

        err = Console(stderr=True, highlight=False)
        with err.status("building the checker's compiled core (once per version of gmemlab)..."):
            start = time.perf_counter()
            out = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True,
                                 text=True, timeout=300)
        if not err.is_terminal:
            err.print(f"built the checker's compiled core in {time.perf_counter() - start:.1f} s: "
                      f"{path}")
        if out.returncode != 0:
            first = (out.stderr.strip().splitlines() or ["(no message)"])[0]
            return f"{Path(cc).name} failed on {SOURCE.name}: {first}"
        os.replace(tmp, path)
        return ""
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {cc}: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_P = ctypes.c_void_p
_I = ctypes.c_int64
_U32P = ctypes.POINTER(ctypes.c_uint32)
_I64P = ctypes.POINTER(ctypes.c_int64)


def _declare(lib: ctypes.CDLL) -> None:
    sig: dict[str, tuple[object, list[object]]] = {
        "gm_new": (_P, [_I64P]),
        "gm_io": (_I64P, [_P]),
        "gm_query": (_U32P, [_P]),
        "gm_width": (_I, [_P]),
        "gm_set_slots": (ctypes.c_int, [_P, _I, ctypes.c_char_p]),
        "gm_set_initial": (None, [_P, _U32P, _I]),
        "gm_add_group": (ctypes.c_int, [_P, _I, _I, _I]),
        "gm_add_rule": (ctypes.c_int, [_P, _I, _I, _I, _U32P, _U32P, _I]),
        "gm_add_result": (ctypes.c_int, [_P, _I, _I, _U32P, _I, _U32P, _I, _I, _U32P, _I, _U32P]),
        "gm_add_keyset": (ctypes.c_int, [_P, _I, _I, _I]),
        "gm_add_proto": (ctypes.c_int, [_P, _I, _I, _U32P, _I, _U32P, _I]),
        "gm_add_verdict": (ctypes.c_int, [_P, _I, _U32P, _I]),
        "gm_add_vlist": (ctypes.c_int, [_P, _I, _I, _U32P]),
        "gm_add_safe": (ctypes.c_int, [_P, _I, _U32P, _I]),
        "gm_add_sym": (ctypes.c_int, [_P, _U32P, _I]),
        "gm_add_term": (ctypes.c_int, [_P, _I, _I, ctypes.c_uint64, ctypes.c_uint64]),
        "gm_set_visible_dirty": (None, [_P, _I]),
        "gm_run": (ctypes.c_int, [_P, _I]),
        "gm_stats": (None, [_P, _I64P]),
        "gm_found": (None, [_P, _I64P]),
        "gm_counts": (ctypes.c_int, [_P, _I, _I64P]),
        "gm_state": (ctypes.c_int, [_P, _I, _I64P]),
        "gm_edges": (ctypes.c_int, [_P, _I, _I64P]),
        "gm_export": (ctypes.c_int, [_P, _I, _I64P]),
        "gm_liveness": (ctypes.c_int, [_P, _I64P]),
        "gm_probe": (ctypes.c_int, [_P, _U32P, _I64P, _U32P]),
        "gm_maxv": (_I, []),
        "gm_free": (None, [_P]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
