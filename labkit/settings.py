"""What labkit reads from its environment, in one place.

- ``LABKIT_QUICK``: set (to anything but "" or "0") it makes every measurement
  short: tests, CI and grading set it to 1.
- ``LABKIT_CACHE_DIR``: the cache root (default ``$XDG_CACHE_HOME/labkit``,
  else ``~/.cache/labkit``). Under it: ``numba/<version>/`` (compiled kernels),
  ``gen/`` (generated source, ``labkit.graph.compile.load_source``), ``c/``
  (the C kernels of ``labkit.bench.ckernels``).
- ``SLICE_S``: how often a compiled loop returns to Python (progress, Ctrl-C);
  numba code cannot be interrupted, so every engine slices its run.

Only the standard library here: every layer may import it.
"""
import functools
import hashlib
import os
import shutil
from pathlib import Path

SLICE_S = 0.05            # seconds: a compiled loop returns to Python this often
KEEP_VERSIONS = 3         # numba cache folders kept: this version's and the two most recent others


def quick():
    """True when LABKIT_QUICK is set (to anything but "" or "0"): short measurements."""
    return os.environ.get("LABKIT_QUICK", "") not in ("", "0")


def cache_root():
    """labkit's cache folder: $LABKIT_CACHE_DIR, else $XDG_CACHE_HOME/labkit, else ~/.cache/labkit."""
    base = os.environ.get("LABKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "labkit")
    return Path(base)


@functools.lru_cache(maxsize=None)
def source_fingerprint():
    """16 hex digits that change whenever any of labkit's Python source does."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha1()
    for d, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(d, f)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as src:
                    h.update(src.read())
    return h.hexdigest()[:16]


def numba_cache_dir(flavor="numba"):
    """Where numba caches labkit's compiled kernels: one folder per version of
    labkit's source. numba checks a cached function against its own file only:
    a kernel that calls a kernel from another file keeps the callee's old code
    when only the callee's file changes (a labkit update, a git pull), which
    once kept a 3x slower in-memory NIC in a run loop's cache. A new folder per
    version of the source recompiles everything once instead. The first time a
    version asks, the folders of all but the KEEP_VERSIONS - 1 most recently
    changed other versions are removed (tens of MB each)."""
    base = os.path.join(cache_root(), flavor)
    path = os.path.join(base, source_fingerprint())
    if not os.path.isdir(path):
        _prune_versions(base, KEEP_VERSIONS - 1)
    return path


def _prune_versions(base, keep):
    """Remove all but the `keep` most recently changed version folders (16 hex
    digits) under base; anything else there is left alone."""
    try:
        versions = [e for e in os.scandir(base) if e.is_dir(follow_symlinks=False) and len(e.name) == 16
                    and all(c in "0123456789abcdef" for c in e.name)]
        versions.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    except OSError:
        return
    for e in versions[keep:]:
        shutil.rmtree(e.path, ignore_errors=True)   # another labkit using it would only recompile
