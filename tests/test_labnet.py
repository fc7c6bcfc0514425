"""The lab network (labkit.nic.labnet): namespaces, veth pairs, TAP, ingress drop.

These tests build real namespaces, so they need root (or CAP_NET_ADMIN and
CAP_SYS_ADMIN); elsewhere the whole module is skipped. They use a prefix of
their own (labkit-t<pid>) and always tear it down.
"""
import os
import select
import socket
import struct
import threading
import time

import pytest
from pyroute2 import IPRoute, netns

from labkit.nic import labnet
from labkit.nic.labnet import DUT_RX, DUT_TX, GEN_RX, GEN_TX, TAP, NetError
from labkit.nic.traffic import DUT_MAC, GEN_MAC

pytestmark = pytest.mark.skipif(labnet.why_not() is not None,
                                reason=f"lab network unavailable: {labnet.why_not()}")

ETH_P_ALL = 3
P = f"labkit-t{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def prefix():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_NET_PREFIX", P)
        try:
            yield P
        finally:
            labnet.down(P)
    assert not [ns for ns in netns.listnetns() if ns in (f"{P}-gen", f"{P}-dut")]


@pytest.fixture
def net():
    """The lab network, TAP included, built (or repaired) for this test."""
    labnet.up(tap=True)
    return labnet.gen_ns(), labnet.dut_ns()


# ---- helpers -------------------------------------------------------------------

def frame(marker, src=GEN_MAC):
    """A broadcast IPv4/UDP frame (to 255.255.255.255) whose payload starts with ``marker``."""
    payload = marker.ljust(18, b"\0")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([255] * 4))
    csum = sum(struct.unpack("!10H", ip))
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    ip = ip[:10] + struct.pack("!H", csum) + ip[12:]
    udp = struct.pack("!HHHH", 1234, 9, 8 + len(payload), 0)
    return b"\xff" * 6 + src + b"\x08\x00" + ip + udp + payload


def packet_socket(ns, ifname=None):
    """An AF_PACKET socket in ``ns``, bound to ``ifname`` (or to every interface of ns)."""
    with labnet.in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        if ifname:
            s.bind((ifname, ETH_P_ALL))
    return s


def wait_for(fd_or_sock, want, seconds=2.0):
    """Read frames until one equals ``want``; return it, or None after ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not select.select([fd_or_sock], [], [], 0.05)[0]:
            continue
        got = fd_or_sock.recv(4096) if isinstance(fd_or_sock, socket.socket) else os.read(fd_or_sock, 4096)
        if got == want:
            return got
    return None


def ip_in_receives(ns):
    """Ip InReceives of namespace ns: every IPv4 packet its IP layer was handed."""
    with labnet.in_netns(ns):
        # /proc/net is /proc/self/net: the namespace of the main thread, not of
        # this one. /proc/thread-self/net is this thread's.
        with open("/proc/thread-self/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Ip:")]
    return int(rows[1][rows[0].index("InReceives")])


def clsact_drops(ns, ifname):
    with labnet.in_netns(ns), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        for q in ipr.get_qdiscs(index=index):
            if q.get("kind") == "clsact":
                return q.get("stats2").get("TCA_STATS_QUEUE")["drops"]
    return None


def root_lk_links():
    with IPRoute() as ipr:
        return [link.get("ifname") for link in ipr.get_links() if link.get("ifname").startswith("lk-")]


def ns_inode():
    return os.stat("/proc/thread-self/ns/net").st_ino


# ---- names -----------------------------------------------------------------------

def test_check_ifname():
    for good in ("lk-g0", "eth0", "a", "x" * 15, "veth.1"):
        assert labnet.check_ifname(good) == good
    for bad in ("", "x" * 16, "a/b", "a:b", "a b", "a\tb", "a\nb", ".", "..", None, 5):
        with pytest.raises(NetError):
            labnet.check_ifname(bad)


def test_prefix_validation(monkeypatch):
    assert labnet.prefix() == P
    assert (labnet.gen_ns(), labnet.dut_ns()) == (f"{P}-gen", f"{P}-dut")
    assert labnet.gen_ns("labkit") == "labkit-gen"
    monkeypatch.delenv("LABKIT_NET_PREFIX")
    assert labnet.prefix() == labnet.PREFIX == "labkit"
    for bad in ("foo", "labkitx", "labkit-", "Labkit", "labkit_x", "labkit-a b", "labkit-" + "a" * 30):
        monkeypatch.setenv("LABKIT_NET_PREFIX", bad)
        with pytest.raises(NetError):
            labnet.prefix()
        with pytest.raises(NetError):
            labnet.gen_ns(bad)


def test_macs_match_the_traffic_generator():
    assert labnet._MAC[GEN_TX] == labnet._MAC[GEN_RX] == labnet._MAC[TAP] == GEN_MAC.hex(":")
    assert labnet._MAC[DUT_RX] == labnet._MAC[DUT_TX] == DUT_MAC.hex(":")


# ---- building --------------------------------------------------------------------

def test_up_builds_every_port(net):
    gen, dut = net
    st = labnet.status()
    assert st["up"] and labnet.is_up() and labnet.is_up(tap=True)
    assert set(st["namespaces"]) == {gen, dut}
    assert set(st["namespaces"][gen]) == {GEN_TX, GEN_RX, TAP}
    assert set(st["namespaces"][dut]) == {DUT_RX, DUT_TX}
    for ns, ports in st["namespaces"].items():
        for ifname, port in ports.items():
            assert port["state"] == "up", ifname
            assert port["ingress_drop"], ifname
            assert port["mac"] == (GEN_MAC if ns == gen else DUT_MAC).hex(":")
            assert port["mtu"] == labnet.link_mtu(ns, ifname) == 1500
    assert root_lk_links() == []


def test_works_on_a_thread_whose_event_loop_is_running():
    # a notebook cell runs on the Jupyter kernel's main thread, inside its asyncio loop,
    # where pyroute2's own loop cannot start: labnet then talks netlink from a thread of its own
    import asyncio

    async def cell():
        labnet.down()
        labnet.up(tap=True)
        st = labnet.status()
        fd = labnet.open_tap()
        os.close(fd)
        return st, labnet.link_mtu(labnet.dut_ns(), DUT_RX)
    st, mtu = asyncio.run(cell())
    assert st["up"] and mtu == 1500


def test_nothing_ever_appears_in_the_root_namespace():
    labnet.down()
    # A netlink socket in the root namespace, subscribed to link events: a
    # link created there and then moved would show up as RTM_NEWLINK.
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as mon:     # 0: NETLINK_ROUTE
        mon.bind((0, 1))                                                  # RTMGRP_LINK
        labnet.up(tap=True)
        mon.setblocking(False)
        events = b""
        while select.select([mon], [], [], 0.1)[0]:
            events += mon.recv(65536)
    for name in (GEN_TX, GEN_RX, DUT_RX, DUT_TX, TAP):
        assert name.encode() + b"\0" not in events
    assert labnet.is_up(tap=True)


def test_links_are_quiet(net):
    for ns in net:
        with labnet.in_netns(ns), IPRoute() as ipr:
            for link in ipr.get_links():
                if link.get("ifname") == "lo":
                    continue
                assert link["flags"] & labnet.IFF_NOARP
                assert not link["flags"] & labnet.IFF_MULTICAST
                assert ipr.get_addr(index=link["index"]) == ()
            for scope in ("all", "default", "lo"):
                with open(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6") as f:
                    assert f.read().strip() == "1"


def test_up_twice_changes_nothing(net):
    gen, dut = net
    before = {}
    for ns in net:
        with labnet.in_netns(ns), IPRoute() as ipr:
            before[ns] = {link.get("ifname"): link["index"] for link in ipr.get_links()}
    labnet.up(tap=True)
    for ns in net:
        with labnet.in_netns(ns), IPRoute() as ipr:
            assert {link.get("ifname"): link["index"] for link in ipr.get_links()} == before[ns]
            for index in before[ns].values():
                if ipr.get_links(index)[0].get("ifname") == "lo":
                    continue
                filters = [f for f in ipr.get_filters(index=index, parent=labnet.TC_INGRESS)
                           if f.get("options")]
                assert len(filters) == 1
                assert [q.get("kind") for q in ipr.get_qdiscs(index=index)].count("clsact") == 1
    assert labnet.is_up(tap=True)


def test_up_repairs(net):
    gen, dut = net
    with labnet.in_netns(gen), IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=GEN_TX)[0])      # takes lk-d0 with it
        ipr.link("set", index=ipr.link_lookup(ifname=GEN_RX)[0], state="down")
    with labnet.in_netns(dut), IPRoute() as ipr:
        ipr.tc("del", "clsact", ipr.link_lookup(ifname=DUT_TX)[0])
        ipr.link("set", index=ipr.link_lookup(ifname=DUT_TX)[0], address="02:00:00:00:00:99")
    st = labnet.status()
    assert not st["up"] and not labnet.is_up()
    assert DUT_RX not in st["namespaces"][dut]
    assert st["namespaces"][gen][GEN_RX]["state"] == "down"
    assert not st["namespaces"][dut][DUT_TX]["ingress_drop"]
    assert st["namespaces"][dut][DUT_TX]["mac"] == "02:00:00:00:00:99"
    assert labnet.up(tap=True)["up"]
    assert labnet.is_up(tap=True)


def test_down_removes_only_its_own(net):
    gen, dut = net
    foreign = [f"notlabkit-{os.getpid()}", f"{P}x-gen"]      # the second one shares our prefix's text
    for ns in foreign:
        netns.create(ns)
    try:
        removed = labnet.down()
        assert f"netns {gen}" in removed and f"netns {dut}" in removed
        assert f"link {gen}/{GEN_TX}" in removed and f"link {dut}/{DUT_TX}" in removed
        left = netns.listnetns()
        assert gen not in left and dut not in left
        for ns in foreign:
            assert ns in left
        assert root_lk_links() == []
        assert labnet.status() == {"up": False, "namespaces": {}}
        assert labnet.down() == []                              # nothing left: no error
        assert not labnet.is_up()
    finally:
        for ns in foreign:
            if ns in netns.listnetns():
                netns.remove(ns)


def test_in_netns_restores_on_error(net):
    gen, _ = net
    home = ns_inode()
    with pytest.raises(ZeroDivisionError):
        with labnet.in_netns(gen):
            assert ns_inode() == os.stat(f"/var/run/netns/{gen}").st_ino != home
            1 / 0
    assert ns_inode() == home
    with pytest.raises(NetError):
        with labnet.in_netns(f"{P}-nosuch"):
            pass
    assert ns_inode() == home


def test_in_netns_moves_only_this_thread(net):
    gen, _ = net
    home, inside, release, seen = ns_inode(), threading.Event(), threading.Event(), []

    def worker():
        with labnet.in_netns(gen):
            seen.append(ns_inode())
            inside.set()
            release.wait(5)
        seen.append(ns_inode())

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert inside.wait(5)
        assert ns_inode() == home                                 # the main thread stayed
    finally:
        release.set()
        t.join()
    assert seen == [os.stat(f"/var/run/netns/{gen}").st_ino, home]


def test_session():
    labnet.down()
    with labnet.session() as st:
        assert st["up"] and labnet.is_up()
    assert not labnet.is_up() and labnet.status()["namespaces"] == {}
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with labnet.session(tap=True):
                assert labnet.is_up(tap=True)
                raise error()
        assert labnet.status()["namespaces"] == {}
    labnet.up(tap=False)
    with labnet.session(tap=True) as st:                          # already up: only adds the TAP
        assert st["up"] and labnet.is_up(tap=True)
    assert labnet.is_up(tap=True)


def test_set_mtu(net):
    gen, dut = net
    try:
        for ns, ifname in ((gen, GEN_TX), (dut, DUT_RX)):
            labnet.set_mtu(ns, ifname, 9000)
            assert labnet.link_mtu(ns, ifname) == 9000
            assert labnet.status()["namespaces"][ns][ifname]["mtu"] == 9000
        with pytest.raises(NetError):
            labnet.set_mtu(gen, GEN_TX, 10)                     # below the 68 bytes IPv4 needs
        assert labnet.link_mtu(gen, GEN_TX) == 9000
    finally:
        labnet.set_mtu(gen, GEN_TX, 1500)
        labnet.set_mtu(dut, DUT_RX, 1500)
    assert labnet.link_mtu(gen, GEN_TX) == labnet.link_mtu(dut, DUT_RX) == 1500


def test_errors_are_net_errors(net):
    gen, _ = net
    with pytest.raises(NetError):
        labnet.link_stats(gen, "lk-nosuch")
    with pytest.raises(NetError):
        labnet.link_mtu(gen, "bad/name")
    labnet.down()
    with pytest.raises(NetError):
        labnet.open_tap()
    with pytest.raises(NetError):
        labnet.link_stats(gen, GEN_TX)


# ---- traffic ---------------------------------------------------------------------

@pytest.mark.parametrize("tx_side, tx_if, rx_side, rx_if", [
    ("gen", GEN_TX, "dut", DUT_RX),
    ("dut", DUT_TX, "gen", GEN_RX),
])
def test_frames_reach_af_packet_but_not_ip(net, tx_side, tx_if, rx_side, rx_if):
    tx_ns, rx_ns = (net[0] if s == "gen" else net[1] for s in (tx_side, rx_side))
    tx, rx = packet_socket(tx_ns, tx_if), packet_socket(rx_ns, rx_if)
    with tx, rx:
        f = frame(b"labkit " + tx_if.encode(), src=GEN_MAC if tx_side == "gen" else DUT_MAC)
        ip_before, drops_before = ip_in_receives(rx_ns), clsact_drops(rx_ns, rx_if)
        tx_before, rx_before = labnet.link_stats(tx_ns, tx_if), labnet.link_stats(rx_ns, rx_if)
        tx.send(f)
        assert wait_for(rx, f) == f
        assert labnet.link_stats(tx_ns, tx_if)["tx_packets"] > tx_before["tx_packets"]
        assert labnet.link_stats(rx_ns, rx_if)["rx_packets"] > rx_before["rx_packets"]
        assert clsact_drops(rx_ns, rx_if) > drops_before           # the filter took it ...
        assert ip_in_receives(rx_ns) == ip_before                  # ... so IP never saw it


def test_without_the_drop_ip_sees_the_frame(net):
    """The control for the test above: the same frame reaches IP when the filter is gone."""
    gen, dut = net
    with labnet.in_netns(dut), IPRoute() as ipr:
        ipr.tc("del", "clsact", ipr.link_lookup(ifname=DUT_RX)[0])
    assert not labnet.status()["namespaces"][dut][DUT_RX]["ingress_drop"]
    with packet_socket(gen, GEN_TX) as tx, packet_socket(dut, DUT_RX) as rx:
        f = frame(b"labkit control")
        before = ip_in_receives(dut)
        tx.send(f)
        assert wait_for(rx, f) == f
        assert ip_in_receives(dut) > before
    labnet.up(tap=True)
    assert labnet.status()["namespaces"][dut][DUT_RX]["ingress_drop"]


def test_tap_both_ways(net):
    gen, _ = net
    fd = labnet.open_tap()
    try:
        with packet_socket(gen, TAP) as s:
            f = frame(b"labkit from the fd")
            before = ip_in_receives(gen)
            os.write(fd, f)
            assert wait_for(s, f) == f
            assert ip_in_receives(gen) == before
            g = frame(b"labkit to the fd")
            s.send(g)
            assert wait_for(fd, g) == g
    finally:
        os.close(fd)


def test_no_link_chatter(net):
    """Nothing at all crosses the lab links unless someone sends it, also when they come up."""
    for ns, names in zip(net, ((GEN_TX, GEN_RX), (DUT_RX, DUT_TX))):
        with labnet.in_netns(ns), IPRoute() as ipr:
            for ifname in names:
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="down")
    # Unbound sockets see every interface of their namespace, down ones
    # included; the TAP's fd sees what the kernel transmits on lk-tap0.
    sniffers = [packet_socket(ns) for ns in net]
    tap = labnet.open_tap()
    try:
        labnet.up(tap=True)                                     # the links come up again
        seen = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for s in select.select(sniffers + [tap], [], [], 0.05)[0]:
                seen.append((s.recv(4096) if s in sniffers else os.read(tap, 4096))[:14].hex())
        assert seen == []
    finally:
        os.close(tap)
        for s in sniffers:
            s.close()
