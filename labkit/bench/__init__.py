"""Benchmarks: what each technique buys, measured side by side in one run.

- ``compute``: ``labkit bench``: cycles and Mpps by vector size, JIT against
  pure Python, numba against the same kernels in C (``ckernels``);
- ``net``: ``labkit bench veth``: the ring driver on veth against netsniff-ng,
  trafgen and the kernel's bridge (root);
- ``cores``: workers, the software Toeplitz hash, false sharing, switch costs
  and threading models (``python -m labkit.bench.cores``);
- ``report``: progress, medians, tables and JSON for all of them.

Benchmarks use the engines (``labkit.run``); nothing below them uses a benchmark.
"""


def main(argv=None):
    """``labkit bench [veth] ...``: the real-NIC benchmark after ``veth``, else the compute one."""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["veth"]:              # the ring driver on veth, against C tools and the kernel
        from . import net
        return net.main(argv[1:])
    from . import compute
    return compute.main(argv)
