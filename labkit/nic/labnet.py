"""The lab network: a generator and a device under test (DUT) wired by cables.

A hardware NIC lab has two machines and two cables: the traffic generator
sends on one port and receives on the other, the DUT forwards in between. Here
the machines are two network namespaces (each has its own interfaces, routes
and counters, like a separate host) and the cables are veth pairs (a frame
sent into one end comes out of the other)::

      P-gen                                    P-dut
    +-----------------+                      +-----------------+
    | lk-g0  (GEN_TX) | --- veth pair A ---> | lk-d0  (DUT_RX) |
    | lk-g1  (GEN_RX) | <-- veth pair B ---- | lk-d1  (DUT_TX) |
    | lk-tap0 (TAP)   |                      |                 |
    +-----------------+                      +-----------------+

The optional TAP is the other kind of virtual port: one end is a network
interface (in P-gen), the other end is a file descriptor that the DUT
``read()``s frames from and ``write()``s frames to (``open_tap``).

Everything is built with netlink (pyroute2), the same messages ``ip`` and
``tc`` send; nothing shells out. Run it as root (or with CAP_NET_ADMIN and
CAP_SYS_ADMIN); ``why_not()`` says why it cannot run when it cannot.
"""
import ctypes
import asyncio
import fcntl
import functools
import os
import platform
import re
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

PREFIX = "labkit"
GEN_TX, GEN_RX, DUT_RX, DUT_TX, TAP = "lk-g0", "lk-g1", "lk-d0", "lk-d1", "lk-tap0"

# Which machine each port belongs to, and its MAC (labkit.nic.traffic's
# GEN_MAC and DUT_MAC as text; not imported, so that this module stays light).
_SIDE = {GEN_TX: "gen", GEN_RX: "gen", TAP: "gen", DUT_RX: "dut", DUT_TX: "dut"}
_MAC = {GEN_TX: "02:00:00:00:00:02", GEN_RX: "02:00:00:00:00:02", TAP: "02:00:00:00:00:02",
        DUT_RX: "02:00:00:00:00:01", DUT_TX: "02:00:00:00:00:01"}
_PAIRS = ((GEN_TX, DUT_RX), (GEN_RX, DUT_TX))      # (end in P-gen, end in P-dut)

NETNS_DIR = "/var/run/netns"      # where `ip netns` and pyroute2 keep named namespaces
CLONE_NEWNET = 0x40000000
IFF_UP, IFF_NOARP, IFF_MULTICAST = 0x1, 0x80, 0x1000
TUNSETIFF, TUNSETPERSIST = 0x400454CA, 0x400454CB
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
TC_INGRESS = 0xFFFFFFF2           # "ffff:fff2": the ingress side of a clsact qdisc
DROP_PROG = "labkit_drop"         # the name `tc filter show` prints for our filter

_libc = ctypes.CDLL(None, use_errno=True)


class NetError(RuntimeError):
    """The lab network cannot be built or used; the message says why, in one line."""


def check_ifname(name):
    """Return ``name`` if Linux accepts it as an interface name, else raise NetError."""
    if (not isinstance(name, str) or not 1 <= len(name) <= 15 or name in (".", "..")
            or any(c == "/" or c == ":" or c.isspace() for c in name)):
        raise NetError(f"bad interface name {name!r}: 1 to 15 characters, no '/', ':' or spaces")
    return name


def _check_prefix(p):
    if not re.fullmatch(r"labkit(-[a-z0-9][a-z0-9-]*)?", p) or len(p) + len("-gen") > 40:
        raise NetError(f"bad lab network prefix {p!r}: 'labkit' or 'labkit-' then [a-z0-9-], "
                       "at most 36 characters")
    return p


def prefix():
    """The prefix of the lab's namespace names: $LABKIT_NET_PREFIX, else PREFIX."""
    return _check_prefix(os.environ.get("LABKIT_NET_PREFIX") or PREFIX)


def _p(p):
    return prefix() if p is None else _check_prefix(p)


def gen_ns(p=None):
    return f"{_p(p)}-gen"


def dut_ns(p=None):
    return f"{_p(p)}-dut"


def _ns_of(ifname, p):
    return gen_ns(p) if _SIDE[ifname] == "gen" else dut_ns(p)


def _ports(tap):
    return [GEN_TX, GEN_RX, DUT_RX, DUT_TX] + ([TAP] if tap else [])


def why_not(tap=False):
    """None if this process can build the lab network (with the TAP), else a one-line reason."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    with open("/proc/self/status") as f:
        cap_eff = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    if not cap_eff & (1 << 12):                      # CAP_NET_ADMIN: links, qdiscs
        return "not root and no CAP_NET_ADMIN (run with sudo, or use --backend memory)"
    if not cap_eff & (1 << 21):                      # CAP_SYS_ADMIN: setns(), mounts
        return "no CAP_SYS_ADMIN, needed to enter namespaces (run with sudo, or use --backend memory)"
    if not os.path.exists("/proc/self/ns/net"):
        return "network namespaces unavailable (kernel built without CONFIG_NET_NS)"
    if tap and not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (kernel built without CONFIG_TUN?)"
    return None


# ---- namespaces --------------------------------------------------------------

def _setns(fd, what):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise NetError(f"cannot enter {what}: {os.strerror(ctypes.get_errno())}")


@contextmanager
def in_netns(ns):
    """Move THIS THREAD into network namespace ``ns`` for the ``with`` body.

    A namespace is per thread: other threads stay where they are. Sockets
    (packet, netlink, /dev/net/tun) belong to the namespace of the thread that
    created them, for their whole life, so a socket made inside the body keeps
    working in ``ns`` after the body ends. The thread's own namespace is
    restored on the way out, exceptions included.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
        except FileNotFoundError:
            raise NetError(f"network namespace {ns} does not exist (bring the lab network up)") from None
        try:
            _setns(target, f"network namespace {ns}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home, "the original network namespace")
    finally:
        os.close(home)


def _off_loop(fn):
    """pyroute2's synchronous API drives an asyncio loop of its own, which
    cannot run on a thread whose loop is already running: a Jupyter kernel's
    main thread, where a notebook cell makes a ``Lab(backend="veth")``. There
    ``fn`` runs on a thread of its own (namespaces are per thread, so ``fn``
    enters the one it needs there); everywhere else it runs as called."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with ThreadPoolExecutor(1, thread_name_prefix="labkit netlink") as pool:
            return pool.submit(fn, *args, **kwargs).result()
    return run


@contextmanager
def _rtnl(ns):
    """A netlink (rtnetlink) socket that talks to the kernel of namespace ``ns``."""
    with in_netns(ns), IPRoute() as ipr:
        yield ipr


def _ns_exists(ns):
    """True if /var/run/netns/<ns> holds a namespace: a mounted nsfs inode, not a stale file."""
    try:
        return os.stat(os.path.join(NETNS_DIR, ns)).st_dev == os.stat("/proc/self/ns/net").st_dev
    except FileNotFoundError:
        return False


def _make_ns(ns):
    if ns in netns.listnetns() and not _ns_exists(ns):
        netns.remove(ns)                             # a stale name left by a crash: start over
    if not _ns_exists(ns):
        netns.create(ns)
    # No IPv6 on the lab links: a link that comes up with IPv6 sends router
    # solicitations, duplicate address probes and MLD reports, frames the
    # DUT would count as traffic. "default" covers links created later,
    # "all" the ones that exist (lo), so set both before creating links.
    scopes = [f"ipv6/conf/{scope}/disable_ipv6" for scope in ("all", "default")]
    net_sysctls(ns, scopes, {name: 1 for name in scopes})


def net_sysctls(ns, names, values=None):
    """{name: value} of the settings /proc/sys/net/<name> in namespace ``ns``, each first set
    to ``values[name]`` when given; a setting this kernel lacks is left out."""
    out = {}
    with in_netns(ns):               # /proc/sys/net shows the namespace of the thread that opens the file
        for name in names:
            path = f"/proc/sys/net/{name}"
            if not os.path.exists(path):
                continue
            if values is not None and name in values:
                with open(path, "w") as f:
                    f.write(str(values[name]))
            with open(path) as f:
                out[name] = int(f.read())
    return out


# ---- the ingress drop --------------------------------------------------------
#
# The DUT owns its ports the way a DPDK application owns its NIC: the kernel's
# own stack must not process the traffic too. Without that, every frame
# reaching a lab port also climbs into the kernel's IP layer, which (there is
# no address in these namespaces) looks up a route for it and then drops it:
# about 40% of the cost of a packet, spent for nothing.
#
# So every lab port gets a tc filter that drops every frame on ingress. In
# __netif_receive_skb_core the kernel first hands the frame to the packet
# sockets bound to ETH_P_ALL ("taps", what AF_PACKET drivers and tcpdump use),
# and only then runs tc ingress, then the protocol handlers (IP). The drop
# therefore sits exactly between the two: AF_PACKET sees every frame, IP none.
# (A packet socket bound to one protocol, e.g. ETH_P_IP, is served after tc
# and would see nothing: bind lab sockets to ETH_P_ALL.)
#
# The usual filter is "matchall action drop", but many small kernels (this
# project's CI VM among them) lack cls_matchall and act_gact. cls_bpf is
# nearly everywhere, so the filter is a two-instruction eBPF program in
# "direct action" mode, where the program's return value is the verdict:
#     r0 = TC_ACT_SHOT      (2: drop)
#     exit
# See it with `tc -n P-dut filter show dev lk-d0 ingress`; its drops are counted
# by the clsact qdisc: `tc -n P-dut -s qdisc show dev lk-d0`.

TC_ACT_SHOT = 2
_DROP_INSNS = (struct.pack("<BBhi", 0xB7, 0, 0, TC_ACT_SHOT)      # mov r0, TC_ACT_SHOT
               + struct.pack("<BBhi", 0x95, 0, 0, 0))               # exit
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "loongarch64": 280,
           "ppc64le": 361, "s390x": 351}                            # bpf(2) has no libc wrapper
BPF_PROG_LOAD, BPF_PROG_TYPE_SCHED_CLS = 5, 3


def _load_drop_prog():
    """Load the drop program into the kernel; return its fd (the caller closes it)."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise NetError(f"the bpf() system call number on {platform.machine()} is unknown to labkit")
    insns = ctypes.create_string_buffer(_DROP_INSNS, len(_DROP_INSNS))
    license = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license,
    # log_level, log_size, log_buf, kern_version, prog_flags, prog_name.
    attr = ctypes.create_string_buffer(struct.pack(
        "<IIQQIIQII16s", BPF_PROG_TYPE_SCHED_CLS, len(_DROP_INSNS) // 8, ctypes.addressof(insns),
        ctypes.addressof(license), 0, 0, 0, 0, 0, DROP_PROG.encode()))
    fd = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(BPF_PROG_LOAD), attr, ctypes.c_long(len(attr.raw)))
    if fd < 0:
        raise NetError(f"cannot load the ingress drop program: {os.strerror(ctypes.get_errno())}")
    return fd


def _has_drop(ipr, index):
    for f in ipr.get_filters(index=index, parent=TC_INGRESS):
        opts = f.get("options")
        if (f.get("kind") == "bpf" and opts and opts.get("TCA_BPF_NAME") == DROP_PROG
                and opts.get("TCA_BPF_FLAGS", 0) & 1):           # 1: direct action
            return True
    return False


# ---- building and tearing down -----------------------------------------------

def _index(ipr, ifname):
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _tun_set_iff(fd):
    """Bind a /dev/net/tun fd to the TAP named TAP (created if missing) in the
    namespace the fd was opened in. IFF_NO_PI: bare frames, no extra header."""
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", TAP.encode(), IFF_TAP | IFF_NO_PI))  # struct ifreq


def _make_tap():
    """Create the persistent TAP in the namespace of the calling thread."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        _tun_set_iff(fd)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)            # outlive this fd, until deleted
    finally:
        os.close(fd)


def _configure(ipr, ifname, prog_fd):
    """MAC, quiet flags, up, and the ingress drop (all idempotent)."""
    index = _index(ipr, ifname)
    if ipr.get_links(index)[0].get("address") != _MAC[ifname]:
        ipr.link("set", index=index, address=_MAC[ifname])
    # IFF_NOARP: never resolve addresses; multicast off: no group traffic.
    ipr.link("set", index=index, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP | IFF_MULTICAST)
    ipr.tc("replace", "clsact", index)
    ipr.tc("replace-filter", "bpf", index, 1, parent=TC_INGRESS, prio=1,
           fd=prog_fd, name=DROP_PROG, direct_action=True)


@_off_loop
def up(tap=True, p=None):
    """Build the lab network (or repair what is missing); return status()."""
    p = _p(p)
    reason = why_not(tap)
    if reason:
        raise NetError(reason)
    gen, dut = gen_ns(p), dut_ns(p)
    for ns in (gen, dut):
        _make_ns(ns)
    prog_fd = _load_drop_prog()
    try:
        with open(os.path.join(NETNS_DIR, dut), "rb", buffering=0) as dut_file, _rtnl(gen) as g:
            if tap and _index(g, TAP) is None:
                _make_tap()                          # this thread is in P-gen here
            # The thread moves on to P-dut; socket g still talks to P-gen.
            with _rtnl(dut) as d:
                for a, b in _PAIRS:
                    ia, ib = _index(g, a), _index(d, b)
                    if ia is not None and ib is not None:
                        continue
                    # Half a pair: delete it (deleting a veth end deletes its peer).
                    for ipr, index in ((g, ia), (d, ib)):
                        if index is not None:
                            ipr.link("del", index=index)
                    # Created by P-gen's socket, so end a is born in P-gen; the
                    # peer is born directly in P-dut (IFLA_NET_NS_FD). Nothing ever
                    # appears in the root namespace, so prefixes never collide.
                    g.link("add", ifname=a, kind="veth", address=_MAC[a],
                           peer={"ifname": b, "address": _MAC[b], "net_ns_fd": dut_file.fileno()})
                for ipr in (g, d):
                    ipr.link("set", index=_index(ipr, "lo"), state="up")
                for ifname in _ports(tap):
                    _configure(g if _SIDE[ifname] == "gen" else d, ifname, prog_fd)
    except (NetlinkError, OSError) as e:
        raise NetError(f"building the lab network failed: {e.args[-1]}") from None
    finally:
        os.close(prog_fd)                            # the filters keep the program alive
    return status(p)


@_off_loop
def down(p=None):
    """Remove this prefix's namespaces and their lab links; return what was removed."""
    p = _p(p)
    present = [ns for ns in (gen_ns(p), dut_ns(p)) if ns in netns.listnetns()]
    # List first, delete after: deleting a veth end also deletes its peer.
    found = {}
    for ns in filter(_ns_exists, present):
        with _rtnl(ns) as ipr:
            found[ns] = [n for n in _ports(True) if _ns_of(n, p) == ns and _index(ipr, n) is not None]
    removed = []
    for ns in present:
        if found.get(ns):
            # Delete the links explicitly: a socket still open in the namespace
            # would keep it, and its links, alive after the name is gone.
            with _rtnl(ns) as ipr:
                for ifname in found[ns]:
                    index = _index(ipr, ifname)
                    if index is not None:
                        ipr.link("del", index=index)
                    removed.append(f"link {ns}/{ifname}")
        netns.remove(ns)
        removed.append(f"netns {ns}")
    return removed


# ---- looking at it -------------------------------------------------------------

@_off_loop
def status(p=None):
    """The lab's namespaces (those that exist) and the state of each lab port."""
    p = _p(p)
    spaces = {}
    for ns in (gen_ns(p), dut_ns(p)):
        if not _ns_exists(ns):
            continue
        spaces[ns] = {}
        with _rtnl(ns) as ipr:
            for link in ipr.get_links():
                ifname = link.get("ifname")
                if ifname not in _SIDE:
                    continue
                stats = link.get("stats64") or {}
                spaces[ns][ifname] = {
                    "state": "up" if link["flags"] & IFF_UP else "down",
                    "mac": link.get("address"), "mtu": link.get("mtu"),
                    **{k: stats.get(k, 0) for k in ("rx_packets", "tx_packets", "rx_dropped", "tx_dropped")},
                    "ingress_drop": _has_drop(ipr, link["index"]),
                }
    return {"up": _complete(spaces, p, tap=False), "namespaces": spaces}


def _complete(spaces, p, tap):
    for ifname in _ports(tap):
        port = spaces.get(_ns_of(ifname, p), {}).get(ifname)
        if not port or port["state"] != "up" or not port["ingress_drop"] or port["mac"] != _MAC[ifname]:
            return False
    return True


def is_up(p=None, tap=False):
    """True if every lab port (the TAP too when ``tap``) is there, up, and drops on ingress."""
    p = _p(p)
    return _complete(status(p)["namespaces"], p, tap)


def _require(ipr, ns, ifname):
    index = _index(ipr, check_ifname(ifname))
    if index is None:
        raise NetError(f"no interface {ifname} in network namespace {ns}")
    return index


@_off_loop
def _link(ns, ifname):
    with _rtnl(ns) as ipr:
        return ipr.get_links(_require(ipr, ns, ifname))[0]


def link_stats(ns, ifname):
    """The kernel's 64-bit counters of one interface (IFLA_STATS64)."""
    stats = _link(ns, ifname).get("stats64") or {}
    return {k: stats.get(k, 0) for k in
            ("rx_packets", "tx_packets", "rx_dropped", "tx_dropped", "rx_bytes", "tx_bytes")}


def link_mtu(ns, ifname):
    return _link(ns, ifname).get("mtu")


@_off_loop
def set_mtu(ns, ifname, mtu):
    """Set the MTU of one interface (give both ends of a veth pair the same one)."""
    with _rtnl(ns) as ipr:
        try:
            ipr.link("set", index=_require(ipr, ns, ifname), mtu=mtu)
        except NetlinkError as e:
            raise NetError(f"cannot set the MTU of {ifname} in {ns} to {mtu}: {e.args[-1]}") from None


@_off_loop
def open_tap(p=None):
    """Attach to the lab's TAP: a non-blocking fd to read() and write() whole frames."""
    with _rtnl(gen_ns(p)) as ipr:
        if _index(ipr, TAP) is None:
            raise NetError(f"no {TAP} in {gen_ns(p)} (bring the lab network up with the TAP)")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)   # opened in P-gen
        try:
            _tun_set_iff(fd)
        except OSError as e:
            os.close(fd)
            raise NetError(f"cannot attach to {TAP}: {e.strerror}") from None
    return fd


@contextmanager
def session(tap=False, p=None):
    """The lab network for the ``with`` body; yields status().

    If it is already up it is left as it is (only a missing TAP is added);
    otherwise it is built, and removed again on the way out, whatever ends the
    body (an exception, Ctrl-C).
    """
    if is_up(p):
        yield up(tap=True, p=p) if tap and not is_up(p, tap=True) else status(p)
        return
    try:
        yield up(tap=tap, p=p)
    finally:
        down(p)
