"""The kernel's side of receiving on a veth: NAPI, threaded NAPI, busy polling.

By default a veth hands each frame to the receiving CPU's backlog queue
(``netif_rx``), and the softirq that drains it runs on the CPU that sent the
frame: the generator pays for the DUT's receive path. With GRO on at the
receiving end (and the sender's TSO off, or its frames do not qualify), the
veth runs NAPI instead: frames wait in a ring of the receiving device, and a
NAPI poll takes up to 64 of them at a time, still in the sender's softirq.
With threaded NAPI (``/sys/class/net/DEV/threaded``) that poll runs in a
kernel thread of its own, ``napi/DEV-ID``, which the scheduler places like
any thread: it needs a CPU of its own, as the DUT and the generator do.

``SO_BUSY_POLL`` makes the kernel spin, for so many µs, in ``recv()`` and
(when ``net.core.busy_poll`` is set too) in ``poll()`` before it sleeps:
the socket is checked again and again, and if the socket knows its NAPI ID
(``SO_INCOMING_NAPI_ID``, which protocol sockets and AF_XDP learn from the
frames they receive) the device's NAPI is polled from there as well.
``napi_id`` reads the ID back, so that a run can say which of the two the
kernel could do. Measured on this kernel (6.18, veth, NAPI on): the DUT's
AF_PACKET socket reads 0, so the spin re-checks the ring and nothing more;
at 10 kpps 200 µs of it brought the DUT's median latency from 39.8 to 7.2 µs
for 94% of a CPU instead of 17% (``labkit bench veth --only napi``, medians
of 5, 2026-12-07): kernel-side adaptive polling.

Everything is set with the same calls ``ethtool -K`` and ``echo >
/sys/class/net/...`` make, inside the lab's namespaces, and put back as it
was on the way out (``receive_path``).
"""
import array
import ctypes
import fcntl
import glob
import os
import socket
import struct
import threading
from contextlib import contextmanager

from .labnet import NETNS_DIR, NetError, in_netns

NAPI_MODES = ("off", "gro", "threaded")
SIOCETHTOOL = 0x8946
ETHTOOL_GTSO, ETHTOOL_STSO = 0x1E, 0x1F
ETHTOOL_GGRO, ETHTOOL_SGRO = 0x2B, 0x2C
SO_INCOMING_NAPI_ID, SO_BUSY_POLL, SO_PREFER_BUSY_POLL = 56, 46, 69
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_REC, MS_PRIVATE, MNT_DETACH = 0x4000, 0x40000, 2
USER_HZ = os.sysconf("SC_CLK_TCK")

_libc = ctypes.CDLL(None, use_errno=True)


def ethtool(ns, ifname, cmd, value=None):
    """An ETHTOOL_G*/S* value of ``ifname`` in namespace ``ns`` (the legacy ioctl
    ``ethtool -k``/``-K`` uses); with ``value``, set it first. Returns the value."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        buf = array.array("I", [cmd, 0 if value is None else int(value)])
        ifr = struct.pack("16sP", ifname.encode(), buf.buffer_info()[0])
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
        except OSError as e:
            raise NetError(f"ethtool command {cmd:#x} on {ifname} in {ns}: {e.strerror}") from None
        return buf[1]
    finally:
        s.close()


def _sysfs(ns, ifname, attr, value, out):
    """In this (short-lived) thread: a private mount namespace, network namespace
    ``ns``, sysfs mounted afresh so that /sys/class/net shows ns's devices (what
    ``ip netns exec`` does); then read (and first write) the attribute."""
    def check(rc, what):
        if rc != 0:
            raise NetError(f"{what}: {os.strerror(ctypes.get_errno())}")
    try:
        check(_libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
        check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
        try:
            check(_libc.setns(fd, CLONE_NEWNET), f"enter {ns}")
        finally:
            os.close(fd)
        _libc.umount2(b"/sys", MNT_DETACH)
        check(_libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mount sysfs")
        path = f"/sys/class/net/{ifname}/{attr}"
        if value is not None:
            with open(path, "w") as f:
                f.write(str(value))
        with open(path) as f:
            out.append(f.read().strip())
    except BaseException as e:           # raised again by the caller's thread
        out.append(e)


def sysfs(ns, ifname, attr, value=None):
    """/sys/class/net/IFNAME/ATTR of a device in namespace ``ns`` (written first if
    ``value`` is given). Runs on a thread of its own: the mount namespace it makes
    ends with it, and no other thread's view of /sys changes."""
    out = []
    th = threading.Thread(target=_sysfs, args=(ns, ifname, attr, value, out), name="labkit sysfs")
    th.start()
    th.join()
    if isinstance(out[0], BaseException):
        raise NetError(f"/sys/class/net/{ifname}/{attr} in {ns}: {out[0]}")
    return out[0]


@contextmanager
def receive_path(mode, sender, receiver):
    """The veth from ``sender`` (ns, ifname) to ``receiver`` (ns, ifname) receives
    through the backlog ("off"), NAPI ("gro": GRO on at the receiver, TSO off at
    the sender) or NAPI in a kernel thread ("threaded") for the ``with`` body; then
    everything is put back as it was."""
    if mode not in NAPI_MODES:
        raise NetError(f"NAPI mode {mode!r}: use one of {', '.join(NAPI_MODES)}")
    (sns, sif), (rns, rif) = sender, receiver
    old = (ethtool(sns, sif, ETHTOOL_GTSO), ethtool(rns, rif, ETHTOOL_GGRO))
    old_threaded = None
    try:
        on = mode != "off"
        ethtool(sns, sif, ETHTOOL_STSO, not on and old[0])
        ethtool(rns, rif, ETHTOOL_SGRO, on)
        if on:
            old_threaded = sysfs(rns, rif, "threaded")
            sysfs(rns, rif, "threaded", int(mode == "threaded"))
        yield
    finally:
        try:
            if old_threaded is not None:
                sysfs(rns, rif, "threaded", old_threaded)
            ethtool(rns, rif, ETHTOOL_SGRO, old[1])
            ethtool(sns, sif, ETHTOOL_STSO, old[0])
        except NetError:
            if os.path.exists(os.path.join(NETNS_DIR, rns)):
                raise                    # (a namespace already gone took its devices along)


BUSY_POLL_SYSCTL = "/proc/sys/net/core/busy_poll"


@contextmanager
def poll_spins(usec):
    """``net.core.busy_poll`` at least ``usec`` for the ``with`` body, then as it was.
    It is machine-wide, but poll() spins only on sockets that asked (SO_BUSY_POLL)."""
    with open(BUSY_POLL_SYSCTL) as f:
        old = int(f.read())
    if old >= usec:
        yield
        return
    try:
        with open(BUSY_POLL_SYSCTL, "w") as f:
            f.write(str(usec))
    except OSError as e:
        raise NetError(f"cannot set net.core.busy_poll (poll() spins only with it): {e.strerror}") from None
    try:
        yield
    finally:
        with open(BUSY_POLL_SYSCTL, "w") as f:
            f.write(str(old))


def busy_poll(sock, usec):
    """Ask the kernel to spin on ``sock`` for ``usec`` µs in recv() and poll() before
    sleeping, polling its NAPI instance too if it knows one (SO_BUSY_POLL, and
    SO_PREFER_BUSY_POLL); poll() spins only under ``poll_spins``."""
    sock.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, usec)
    sock.setsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL, 1)


def napi_id(sock):
    """The NAPI instance the kernel recorded for ``sock`` (0: none, so a spin cannot poll the device's NAPI)."""
    return sock.getsockopt(socket.SOL_SOCKET, SO_INCOMING_NAPI_ID)


def _napi_threads(ifname):
    """The stat files of the kernel threads that run ``ifname``'s NAPI polls."""
    out = []
    for comm in glob.glob("/proc/[0-9]*/task/[0-9]*/comm"):
        try:
            with open(comm) as f:
                if f.read().startswith(f"napi/{ifname}-"):
                    out.append(comm[:-4] + "stat")
        except OSError:
            continue
    return out


def kernel_cpu(ifname):
    """CPU seconds so far: (softirq time on all CPUs, /proc/stat; the user and
    system time of ``ifname``'s NAPI threads). Differences of two readings
    are what the kernel spent receiving in between (the softirq figure also
    holds the machine's other softirq work, timers included)."""
    with open("/proc/stat") as f:
        softirq = int(f.readline().split()[7]) / USER_HZ
    threads = 0.0
    for stat in _napi_threads(ifname):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            threads += (int(fields[11]) + int(fields[12])) / USER_HZ
        except (OSError, IndexError):
            continue
    return softirq, threads
