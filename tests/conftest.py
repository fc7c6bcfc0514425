"""Tests run every numba kernel with bounds checking on: an out-of-bounds
read or write raises IndexError instead of reading a neighbour's bytes. The
flag changes the compiled code, so it gets a numba cache of its own."""
import os

os.environ["NUMBA_BOUNDSCHECK"] = "1"
os.environ["NUMBA_CACHE_DIR"] = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "labkit", "numba-boundscheck")
