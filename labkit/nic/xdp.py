"""XDP programs on the lab network: written in C, compiled with clang, loaded with libbpf.

An XDP program runs in the driver, on each frame, before the kernel builds an
``sk_buff`` for it, and returns a verdict: drop, pass, send back out (TX), or
redirect. It is the in-kernel fast path the chapter sets beside kernel
bypass. This module is the machinery the XDP lessons share:

- ``build(source)``: ``clang -O2 -g -target bpf``, once per source text
  (the object is cached under ``labkit.settings.cache_root()/xdp``);
- ``Program(source, name)``: the object loaded into the kernel through
  libbpf (``libbpf.so.1``, through ctypes: no tool that downloads
  anything). The kernel's verifier checks the program first; when it
  refuses, ``XdpError`` carries the verifier's own log;
- ``Program.attach(ns, ifname)``: on an interface of a lab namespace, in
  native (driver) mode, which veth has, through a BPF link: ``close()``
  detaches it and frees the maps, whatever ends the ``with`` body, and the
  kernel does the same when the process dies, even by SIGKILL;
- ``Program.test_run(frame)``: the program run once on a frame of one's own
  (BPF_PROG_TEST_RUN), attached to nothing: its verdict and the bytes after;
- ``Program.counters(map)``: a per-CPU array map, summed over the CPUs.

The C sources labkit ships are in ``labkit/nic/xdp/``. ``why_not()`` says in
one line what is missing (clang, libbpf's headers or library, root).
"""
import ctypes
import hashlib
import mmap
import os
import platform
import shutil
import socket
import subprocess
import sysconfig
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..settings import cache_root
from .labnet import in_netns

SOURCES = Path(__file__).with_name("xdp")
XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 1 << 1, 1 << 2
BPF_XDP = 37                      # enum bpf_attach_type
LOG_SIZE = 1 << 20
INSTALL = "apt-get install clang libbpf-dev"


class XdpError(RuntimeError):
    """An XDP program that cannot be built, loaded or attached; the message says why."""


def _multiarch():
    """Debian's folder of architecture headers (asm/types.h), which clang -target bpf does not search."""
    for name in (sysconfig.get_config_var("MULTIARCH"), f"{platform.machine()}-linux-gnu"):
        if name and Path("/usr/include", name).is_dir():
            return name
    return ""


def why_not_build():
    """None when XDP programs can be built here (clang, libbpf's headers); else why not."""
    if shutil.which("clang") is None:
        return f"clang is not installed ({INSTALL})"
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        return f"libbpf's headers are not installed ({INSTALL})"
    return None


def why_not():
    """None when XDP programs can be built, loaded and attached here; else why not, in one line."""
    if why_not_build():
        return why_not_build()
    try:
        _libbpf()
    except OSError:
        return f"libbpf.so.1 is not installed ({INSTALL})"
    if os.geteuid() != 0:
        return "loading an XDP program needs root (CAP_BPF and CAP_NET_ADMIN)"
    return None


def build(source, reasons=(), defines=()):
    """The BPF object file of C source ``source`` (a path, or a name in labkit/nic/xdp/),
    compiled once per source text, ``reasons`` and ``defines``; XdpError with clang's message
    when it fails.

    ``reasons``: a graph's drop reasons; each becomes ``-DR_<reason>=<k>`` (its index) and
    ``-DN_REASONS``, so that the program's counters are numbered as the graph's (labkit_xdp.h).
    ``defines``: more names to define (``-DNAME``), choices the source makes with #ifdef."""
    path = Path(source) if Path(source).suffix == ".c" else SOURCES / f"{source}.c"
    text = path.read_text()
    clang = shutil.which("clang")
    if clang is None:
        raise XdpError(f"clang is not installed ({INSTALL})")
    flags = ["-O2", "-g", "-target", "bpf", "-Wall", f"-I{SOURCES}"]
    if _multiarch():
        flags.append(f"-I/usr/include/{_multiarch()}")      # asm/types.h
    if reasons:
        flags += [f"-DR_{r}={k}" for k, r in enumerate(reasons)] + [f"-DN_REASONS={len(reasons)}"]
    flags += [f"-D{name}" for name in defines]
    header = (SOURCES / "labkit_xdp.h").read_text()
    key = hashlib.sha1("\n".join([text, header, " ".join(flags)]).encode()).hexdigest()[:16]
    d = cache_root() / "xdp"
    d.mkdir(parents=True, exist_ok=True)
    obj = d / f"{path.stem}-{key}.o"
    if not obj.exists():
        tmp = obj.with_suffix(f".tmp{os.getpid()}.o")
        p = subprocess.run([clang, *flags, "-c", str(path), "-o", str(tmp)], capture_output=True, text=True)
        if p.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise XdpError(f"clang could not compile {path.name}:\n{p.stderr.strip()[-2000:]}")
        os.replace(tmp, obj)
    return obj


_lib = []


def _libbpf():
    """libbpf through ctypes, its functions typed (once)."""
    if _lib:
        return _lib[0]
    lb = ctypes.CDLL("libbpf.so.1", use_errno=True)
    P, I, U32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    for name, res, args in (
            ("bpf_object__open_file", P, [ctypes.c_char_p, P]), ("bpf_object__load", I, [P]),
            ("bpf_object__close", None, [P]), ("bpf_object__next_program", P, [P, P]),
            ("bpf_object__find_program_by_name", P, [P, ctypes.c_char_p]), ("bpf_program__fd", I, [P]),
            ("bpf_program__set_log_buf", I, [P, ctypes.c_char_p, ctypes.c_size_t]),
            ("bpf_program__set_log_level", I, [P, U32]),
            ("bpf_object__find_map_fd_by_name", I, [P, ctypes.c_char_p]),
            ("bpf_map_lookup_elem", I, [I, P, P]), ("bpf_xdp_query_id", I, [I, I, ctypes.POINTER(U32)]),
            ("bpf_object__find_map_by_name", P, [P, ctypes.c_char_p]), ("bpf_map__set_max_entries", I, [P, U32]),
            ("bpf_map_update_elem", I, [I, P, P, ctypes.c_uint64]), ("bpf_prog_test_run_opts", I, [I, P]),
            ("bpf_enable_stats", I, [I]), ("bpf_link_create", I, [I, I, I, P]), ("libbpf_set_print", P, [P]),
            ("libbpf_num_possible_cpus", I, [])):
        fn = getattr(lb, name)
        fn.restype, fn.argtypes = res, args
    lb.libbpf_set_print(None)      # no libbpf chatter on stderr: errors come back as XdpError
    _lib.append(lb)
    return lb


def _ifindex(ns, ifname):
    with in_netns(ns):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            raise XdpError(f"no interface {ifname} in {ns}") from None


def attached_id(ns, ifname):
    """The id of the XDP program on ``ifname`` in namespace ``ns`` (0: none)."""
    lb, prog_id = _libbpf(), ctypes.c_uint32(0)
    with in_netns(ns):
        if lb.bpf_xdp_query_id(_ifindex(ns, ifname), 0, ctypes.byref(prog_id)) < 0:
            raise XdpError(f"cannot query XDP on {ifname} in {ns}: {os.strerror(ctypes.get_errno())}")
    return prog_id.value


class _LinkOpts(ctypes.Structure):
    """struct bpf_link_create_opts, as far as an XDP link needs it (libbpf zero-fills the rest)."""
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32)]


class _TestRun(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf's bpf.h): one BPF_PROG_TEST_RUN."""
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


@contextmanager
def run_time_stats():
    """While open, the kernel times every BPF program run (BPF_ENABLE_STATS: two clock
    reads per run); ``Program.run_stats()`` reads the totals. Off again on exit."""
    fd = _libbpf().bpf_enable_stats(0)                  # BPF_STATS_RUN_TIME
    if fd < 0:
        raise XdpError(f"cannot turn on BPF run-time statistics: {os.strerror(-fd)}")
    try:
        yield
    finally:
        os.close(fd)


class Program:
    """A BPF object loaded into the kernel (``name``: its XDP program); a context manager.

    ``reasons`` numbers its counters (``build``); ``sizes`` ({map: entries}) sizes maps
    before the object is loaded (a FIB's routes, its adjacencies)."""

    def __init__(self, source, name, reasons=(), sizes=None, defines=()):
        self.lb, self.name, self.obj, self.attached, self._mmaps = _libbpf(), name, None, [], []
        path = build(source, reasons, defines)
        self.obj = self.lb.bpf_object__open_file(str(path).encode(), None)
        if not self.obj:
            raise XdpError(f"libbpf cannot open {path.name}: {os.strerror(ctypes.get_errno())}")
        for map_name, entries in (sizes or {}).items():
            m = self.lb.bpf_object__find_map_by_name(self.obj, map_name.encode())
            if not m or self.lb.bpf_map__set_max_entries(m, max(1, int(entries))):
                self.close()
                raise XdpError(f"{path.name} has no map named {map_name} to size")
        self._log = ctypes.create_string_buffer(LOG_SIZE)
        prog = self.lb.bpf_object__find_program_by_name(self.obj, name.encode())
        if not prog:
            self.close()
            raise XdpError(f"{path.name} has no program named {name}")
        self.lb.bpf_program__set_log_buf(prog, self._log, LOG_SIZE)
        self.lb.bpf_program__set_log_level(prog, 1)
        err = self.lb.bpf_object__load(self.obj)
        if err:
            log = self.verifier_log
            self.close()
            raise XdpError(f"the kernel refused {name} ({os.strerror(-err)}); the verifier said:\n{log}")
        self.fd = self.lb.bpf_program__fd(prog)

    @property
    def verifier_log(self):
        """What the verifier said about the program (its last lines hold the verdict)."""
        return self._log.value.decode(errors="replace").strip()

    def attach(self, ns, ifname, mode="native"):
        """Run the program on every frame ``ifname`` (in namespace ``ns``) receives, until close().

        Attached through a BPF link (BPF_LINK_CREATE), which lives as long as its file
        descriptor: when this process ends, however it ends (SIGKILL included), the kernel
        closes the descriptor and detaches the program. (Attached the older way, through
        netlink, a program stays on the interface until someone removes it.)"""
        flags = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}.get(mode)
        if flags is None:
            raise XdpError(f"XDP mode {mode!r}: use 'native' (in the driver) or 'generic' (after the sk_buff)")
        index = _ifindex(ns, ifname)
        opts = _LinkOpts(sz=ctypes.sizeof(_LinkOpts), flags=flags)
        with in_netns(ns):
            fd = self.lb.bpf_link_create(self.fd, index, BPF_XDP, ctypes.byref(opts))
        if fd < 0:
            raise XdpError(f"cannot attach {self.name} to {ifname} in {ns} ({mode}): {os.strerror(-fd)}")
        self.attached.append(fd)

    def map_fd(self, map_name):
        fd = self.lb.bpf_object__find_map_fd_by_name(self.obj, map_name.encode())
        if fd < 0:
            raise XdpError(f"the object of {self.name} has no map named {map_name}")
        return fd

    def update(self, map_name, key, value):
        """Set ``key`` (bytes) to ``value`` (bytes) in map ``map_name``."""
        k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
        err = self.lb.bpf_map_update_elem(self.map_fd(map_name), k, v, 0)
        if err:
            raise XdpError(f"cannot update map {map_name} of {self.name}: {os.strerror(-err)}")

    def array(self, map_name, dtype, entries, value_size):
        """An array map created BPF_F_MMAPABLE, as a numpy array of ``dtype`` over the map's own
        memory: what user space writes there, the program reads. Valid until close()."""
        size = -(-entries * value_size // mmap.PAGESIZE) * mmap.PAGESIZE
        m = mmap.mmap(self.map_fd(map_name), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mmaps.append(m)
        return np.frombuffer(m, dtype, count=entries * value_size // np.dtype(dtype).itemsize)

    def test_run(self, frame, max_out=4096):
        """Run the program once on ``frame`` (bytes, at least 14) in the kernel, attached to
        nothing (BPF_PROG_TEST_RUN: its maps are updated, a redirect is only a verdict):
        (verdict, the frame's bytes after it)."""
        data = ctypes.create_string_buffer(bytes(frame), len(frame))
        out = ctypes.create_string_buffer(max_out)
        opts = _TestRun(sz=ctypes.sizeof(_TestRun), data_in=ctypes.addressof(data), data_out=ctypes.addressof(out),
                        data_size_in=len(frame), data_size_out=max_out, repeat=1)
        err = self.lb.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        if err:
            raise XdpError(f"BPF_PROG_TEST_RUN of {self.name} on {len(frame)} bytes: {os.strerror(-err)}")
        return opts.retval, out.raw[:opts.data_size_out]

    def run_stats(self):
        """(runs, nanoseconds in the program) since it was loaded, counted while
        ``run_time_stats()`` is open (the kernel's fdinfo of the program)."""
        with open(f"/proc/self/fdinfo/{self.fd}") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        return int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))

    def counters(self, map_name):
        """A per-CPU array map's values, each summed over the CPUs (numpy uint64)."""
        fd = self.map_fd(map_name)
        cpus = self.lb.libbpf_num_possible_cpus()       # a per-CPU value has a slot for every possible CPU
        out, key, values = [], ctypes.c_uint32(0), np.zeros(cpus, np.uint64)
        while self.lb.bpf_map_lookup_elem(fd, ctypes.byref(key), values.ctypes.data) == 0:
            out.append(int(values.sum()))
            key.value += 1
        return np.array(out, np.uint64)

    def close(self):
        """Detach from every interface it is on, then free the program and its maps."""
        while self.attached:
            os.close(self.attached.pop())          # the link's last reference: detached
        for m in self._mmaps:
            try:
                m.close()
            except BufferError:                    # a numpy view still holds it: the GC will
                pass
        self._mmaps = []
        if self.obj:
            self.lb.bpf_object__close(self.obj)
            self.obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
