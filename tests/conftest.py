"""Tests run every numba kernel with bounds checking on: an out-of-bounds
read or write raises IndexError instead of reading a neighbour's bytes. The
flag changes the compiled code, so it gets a numba cache of its own."""
import os

import labkit  # noqa: E402  (light: numba is not imported yet, so the cache folder below still applies)

os.environ["NUMBA_BOUNDSCHECK"] = "1"
os.environ["NUMBA_CACHE_DIR"] = labkit.numba_cache_dir("numba-boundscheck")
