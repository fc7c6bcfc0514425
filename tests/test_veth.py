"""The ring driver on a real (virtual) NIC: generator -> veth/TAP -> DUT -> back.

Needs root (CI runs as root); skipped with the reason otherwise. Every test
uses a lab network of its own prefix, so a developer's `labkit net up` is
never touched, and the network is removed at the end whatever happens.
No test asserts a rate or a time: only counts, bytes and conservation.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import lab_network

from labkit import Knobs
from labkit.nic import labnet
from labkit.nic.pcap import PcapWriter, read_frames
from labkit.nic.traffic import make_traffic
from labkit.run.lab import Lab

WHY = labnet.why_not(tap=True)
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"needs the lab network: {WHY}")
PREFIX = f"labkit-t{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def lab_net():
    yield from lab_network(PREFIX)


def _run(backend="veth", graph="l2fwd", packets=100_000, **kw):
    lab_kw = {k: kw.pop(k) for k in ("rate", "gen_batch", "pcap_in", "pcap_out", "malformed", "size")
              if k in kw}
    with Lab(backend=backend, graph=graph, knobs=Knobs(**kw), **lab_kw) as lab:
        r = lab.run(packets=packets)
    assert r.sent == packets
    assert r.conserved, (r.sent, r.forwarded, r.dropped)
    assert r.pool_ok
    return r


# -- conservation, end to end ------------------------------------------------------

@pytest.mark.parametrize("graph", ["l2fwd", "ip4"])
def test_100k_packets_conserved(graph):
    r = _run(graph=graph)
    assert r.forwarded > 0
    assert r.sent == r.forwarded + sum(r.dropped.values())
    assert r.cpu_percent is not None and r.cpu_percent > 0
    assert r.extra["port"] == "ring"


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("batch", [1, 31, 32, 33])
def test_odd_batch_sizes(batch, copy):
    r = _run(packets=20_000, batch=batch, copy=copy)
    assert r.forwarded > 0
    assert r.extra["port"] == ("socket" if copy else "ring")


def test_poll_wait_mode_conserves_and_sleeps():
    r = _run(packets=20_000, poll="wait", rate=20_000)
    assert r.forwarded > 0
    assert r.extra["dut_polls"] > 0          # it did sleep in poll() between frames


def test_busy_mode_never_calls_poll():
    r = _run(packets=5_000, poll="busy", rate=20_000)
    assert r.extra["dut_polls"] == 0


def test_qdisc_path_conserves():
    _run(packets=20_000, qdisc_bypass=False)


def test_malformed_frames_drop_for_the_same_reasons_as_in_memory():
    # Slow enough that the kernel drops nothing: then each malformed frame is
    # dropped by the same node for the same reason as on the in-memory NIC,
    # except the 10-byte runt, which no Ethernet link carries: the generator
    # counts it unsendable before it reaches the wire.
    r = _run(graph="ip4", packets=20_000, malformed=0.2, rate=50_000)
    with Lab(backend="memory", graph="ip4", malformed=0.2) as lab:
        m = lab.run(packets=20_000)
    expect = dict(m.dropped)
    expect["gen_unsendable"] = expect.pop("eth_runt")
    assert r.dropped == expect
    assert r.forwarded == m.forwarded


def test_tap_backend_conserves():
    r = _run(backend="tap", graph="ip4", packets=20_000)
    assert r.extra["port"] == "tap"
    assert r.forwarded > 0


def test_rate_is_a_ceiling():
    # Not a timing assertion on the machine: the generator may be slower than
    # asked, never faster (it sends no frame before its time).
    r = _run(packets=2_000, rate=10_000)
    assert r.extra["gen_tx_pps"] <= 10_000 * 1.05


# -- bytes ---------------------------------------------------------------------------

def test_copy_and_zero_copy_forward_identical_bytes(tmp_path):
    outs = {}
    for copy in (False, True):
        out = tmp_path / f"copy{int(copy)}.pcap"
        r = _run(graph="ip4", packets=3_000, copy=copy, rate=30_000, pcap_out=str(out))
        assert r.forwarded == r.sent, r.dropped     # slow enough that nothing is lost
        outs[copy] = read_frames(str(out))
    a, b = outs[False], outs[True]
    assert len(a) == len(b) == 3_000
    assert a == b
    # and they are really forwarded: TTL decremented, MACs rewritten
    t = make_traffic(size=64, flows=1024, seed=1)
    assert a[0] != bytes(t.frames[t.seq[0], :t.lengths[t.seq[0]]])


def test_l2fwd_swaps_macs_on_the_wire(tmp_path):
    out = tmp_path / "l2.pcap"
    _run(graph="l2fwd", packets=500, rate=20_000, pcap_out=str(out))
    frames = read_frames(str(out))
    t = make_traffic(size=64, flows=1024, seed=1)
    for i, f in enumerate(frames[:50]):
        sent = bytes(t.frames[t.seq[i], :t.lengths[t.seq[i]]])
        assert f[:6] == sent[6:12] and f[6:12] == sent[:6] and f[12:] == sent[12:]


def _set_mtu(mtu):
    for ns, ifs in ((labnet.gen_ns(), (labnet.GEN_TX, labnet.GEN_RX)),
                    (labnet.dut_ns(), (labnet.DUT_RX, labnet.DUT_TX))):
        for ifname in ifs:
            labnet.set_mtu(ns, ifname, mtu)


@pytest.mark.parametrize("copy", [False, True])
def test_frame_longer_than_a_buffer_is_counted_not_fatal(tmp_path, copy):
    small = make_traffic(size=100, flows=4, seed=3)
    big = np.zeros(4000, np.uint8)
    big[:small.lengths[0]] = small.frames[0, :small.lengths[0]]
    pcap = tmp_path / "mixed.pcap"
    with PcapWriter(str(pcap)) as w:
        for i in range(30):
            w.write(bytes(big) if i % 3 == 0 else bytes(small.frames[0, :small.lengths[0]]))
    _set_mtu(9000)
    try:
        r = _run(graph="l2fwd", packets=30, pcap_in=str(pcap), copy=copy, rate=10_000)
    finally:
        _set_mtu(1500)
    assert r.dropped.get("rx_frame_too_long") == 10, r.dropped
    assert r.forwarded == 20


# -- clean-up ------------------------------------------------------------------------

def _labkit(*args, prefix, **popen):
    """labkit in a child process, with SIGINT as a terminal's Ctrl-C finds it: a shell
    without job control starts background jobs (a CI runner's, say) with SIGINT
    ignored, and children inherit that."""
    env = dict(os.environ, LABKIT_NET_PREFIX=prefix)
    return subprocess.Popen([sys.executable, "-m", "labkit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def _namespaces(prefix):
    return [n for n in os.listdir("/var/run/netns") if n.startswith(prefix + "-")] \
        if os.path.isdir("/var/run/netns") else []


@pytest.mark.parametrize("sig, code, more", [(signal.SIGINT, 130, ()), (signal.SIGTERM, 143, ()),
                                             (signal.SIGINT, 130, ("--workers", "2"))],   # fanout workers
                         ids=["sigint", "sigterm", "sigint-fanout"])
def test_signal_mid_run_removes_what_the_run_made(sig, code, more):
    prefix = f"labkit-s{os.getpid()}{sig}{len(more)}"
    p = _labkit("run", "--backend", "veth", "--graph", "l2fwd", "--seconds", "60", *more, prefix=prefix)
    try:
        deadline = time.monotonic() + 120
        while len(_namespaces(prefix)) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert len(_namespaces(prefix)) == 2, p.communicate()
        time.sleep(1.0)                          # into the run (or its set-up): either must clean up
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert _namespaces(prefix) == []


def test_run_without_net_up_makes_and_removes_its_network():
    prefix = f"labkit-r{os.getpid()}"
    p = _labkit("run", "--backend", "veth", "--graph", "l2fwd", "--packets", "5000", "--json", prefix=prefix)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert '"conserved": true' in out
    assert _namespaces(prefix) == []


def test_run_leaves_a_network_that_was_up():
    r = _run(packets=1_000)
    assert r.conserved
    assert labnet.is_up()


# -- the command line ----------------------------------------------------------------

def _cli(*args, prefix=PREFIX):
    p = _labkit(*args, prefix=prefix)
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def test_demo_runs_the_io_techniques_on_veth():
    import json
    code, out, err = _cli("demo", "--backend", "veth", "--json", "--seconds", "0.05")
    assert code == 0, err
    rows = {r["technique"]: r for r in json.loads(out)}
    for name in ("polling", "I/O batching", "qdisc bypass", "zero-copy"):
        r = rows[name]
        assert r["backend"] == "veth", r
        assert r["off_mpps"] > 0 and r["on_mpps"] > 0
        assert r["off_cpu_percent"] > 0 and r["on_cpu_percent"] > 0
    assert rows["JIT compilation"]["backend"] == "memory"
    assert rows["polling"]["rate"] > 0


def test_net_up_status_down_from_the_command_line():
    import json
    prefix = f"labkit-n{os.getpid()}"
    try:
        code, out, err = _cli("net", "up", "--tap", "--json", prefix=prefix)
        assert code == 0, err
        st = json.loads(out)
        assert st["up"] is True
        assert set(st["namespaces"]) == {prefix + "-gen", prefix + "-dut"}
        assert "lk-tap0" in st["namespaces"][prefix + "-gen"]
        code, out, err = _cli("net", "status", prefix=prefix)
        assert code == 0 and "lk-d0" in out and "lk-g1" in out, err
        code, out, err = _cli("run", "--backend", "veth", "--graph", "l2fwd", "--packets", "100000", "--json",
                              prefix=prefix)
        assert code == 0, err
        r = json.loads(out)
        assert r["sent"] == 100000 and r["conserved"] and r["pool_ok"]
        assert sorted(_namespaces(prefix)) == [prefix + "-dut", prefix + "-gen"]   # a net that was up stays up
    finally:
        code, out, err = _cli("net", "down", prefix=prefix)
    assert code == 0, err
    assert "removed" in err
    assert _namespaces(prefix) == []
    code, out, err = _cli("net", "down", prefix=prefix)
    assert code == 0 and "nothing to remove" in err
