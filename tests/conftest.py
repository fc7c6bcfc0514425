"""Tests run every numba kernel with bounds checking on: an out-of-bounds
read or write raises IndexError instead of reading a neighbour's bytes. The
flag changes the compiled code, so it gets a numba cache of its own."""
import os

import labkit  # noqa: E402  (light: numba is not imported yet, so the cache folder below still applies)

os.environ["NUMBA_BOUNDSCHECK"] = "1"
os.environ["NUMBA_CACHE_DIR"] = labkit.numba_cache_dir("numba-boundscheck")


def lab_network(prefix, tap=True):
    """A fixture body: the lab network under `prefix` (LABKIT_NET_PREFIX) for a module's tests,
    built before them and removed after, whatever happens; the old prefix is put back."""
    from labkit.nic import labnet
    old = os.environ.get("LABKIT_NET_PREFIX")
    os.environ["LABKIT_NET_PREFIX"] = prefix
    try:
        labnet.up(tap=tap)
        yield
    finally:
        labnet.down()
        if old is None:
            os.environ.pop("LABKIT_NET_PREFIX", None)
        else:
            os.environ["LABKIT_NET_PREFIX"] = old
