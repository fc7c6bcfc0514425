"""labkit: a teaching data plane where every acceleration technique is a knob.

    from labkit import Lab, Knobs
    with Lab(graph="ip4", knobs=Knobs(batch=32)) as lab:
        print(lab.run(seconds=1).to_dict())

Importing labkit is cheap: ``Lab`` (and with it numba and the data plane) is
imported on first use.
"""
import os
import sys

from labkit.settings import KEEP_VERSIONS, numba_cache_dir, source_fingerprint  # noqa: F401  (stdlib only)

__version__ = "0.1.0"


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
