"""labkit: a teaching data plane where every acceleration technique is a knob.

    from labkit import Lab, Knobs
    with Lab(graph="ip4", knobs=Knobs(batch=32)) as lab:
        print(lab.run(seconds=1).to_dict())

Importing labkit is cheap: ``Lab`` (and with it numba and the data plane) is
imported on first use.
"""
import functools
import hashlib
import os
import sys

__version__ = "0.1.0"


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


KEEP_VERSIONS = 3     # cache folders kept per flavor: this version's and the two most recent others


def numba_cache_dir(flavor="numba"):
    """Where numba caches labkit's compiled kernels: one folder per version of
    labkit's source. numba checks a cached function against its own file only:
    a kernel that calls a kernel from another file keeps the callee's old code
    when only the callee's file changes (a labkit update, a git pull), which
    once kept a 3x slower in-memory NIC in a run loop's cache. A new folder per
    version of the source recompiles everything once instead. The first time a
    version asks, the folders of all but the KEEP_VERSIONS - 1 most recently
    changed other versions are removed (tens of MB each)."""
    base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "labkit", flavor)
    path = os.path.join(base, source_fingerprint())
    if not os.path.isdir(path):
        _prune_versions(base, KEEP_VERSIONS - 1)
    return path


def _prune_versions(base, keep):
    """Remove all but the `keep` most recently changed version folders (16 hex
    digits) under base; anything else there is left alone."""
    import shutil
    try:
        versions = [e for e in os.scandir(base) if e.is_dir(follow_symlinks=False) and len(e.name) == 16
                    and all(c in "0123456789abcdef" for c in e.name)]
        versions.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    except OSError:
        return
    for e in versions[keep:]:
        shutil.rmtree(e.path, ignore_errors=True)   # another labkit using it would only recompile


# numba caches compiled kernels next to their source by default, which fails
# quietly in a read-only install and litters the tree in a checkout. One
# per-user folder instead. numba reads the variable when it is first imported;
# if it already was (a notebook that imported numba first), set its config too.
os.environ.setdefault("NUMBA_CACHE_DIR", numba_cache_dir())
if "numba" in sys.modules:
    sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

from labkit.run.knobs import Knobs, KnobError  # noqa: E402  (light: dataclasses only)
from labkit.run.result import Result  # noqa: E402

__all__ = ["Lab", "Knobs", "KnobError", "Result", "__version__"]


def __getattr__(name):
    if name in ("Lab", "LabError"):
        from labkit.run import lab
        return getattr(lab, name)
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
