"""backend xdp: labkit's graphs as XDP programs (labkit/nic/xdp/l2fwd.c, ip4.c) on the lab's veth.

Each program gives every frame the verdict the numba graph gives it and, when it
forwards, the same bytes (checked frame by frame in the kernel, BPF_PROG_TEST_RUN);
runs conserve every frame, count drops by the graph's own reasons, and leave nothing
attached, whatever ends them (SIGKILL included)."""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import lab_network

from labkit.graph.compile import TX_T, resolve
from labkit.graph.fib import Fib
from labkit.memory.layouts import DATA_OFF
from labkit.nic import labnet, xdp
from labkit.nic.traffic import make_traffic
from labkit.run import xdprun
from labkit.run.lab import Lab, LabError
from labkit.run.result import NIC_SIDE_DROPS

ROOT = Path(__file__).resolve().parents[1]
WHY = xdp.why_not() or labnet.why_not()
needs_xdp = pytest.mark.skipif(WHY is not None, reason=f"needs XDP on the lab network: {WHY}")
XDP_REDIRECT = 4


def reference(graph, tables, frame):
    """What the numba graph does with `frame` (its nodes' pure-Python twins): ("tx", bytes after)
    or (drop reason, None)."""
    arena = np.zeros(DATA_OFF + max(len(frame), 64), np.uint8)
    arena[DATA_OFF:DATA_OFF + len(frame)] = np.frombuffer(frame, np.uint8)
    i = 0
    while True:
        node = graph.nodes[i]
        code = node.one.py_func(arena, 0, len(frame), *(tables[t] for t in node.tables))
        if code < 0:
            return node.errors[-code - 1][0], None
        i = graph.arcs[i][code]
        if i == TX_T:
            return "tx", arena[DATA_OFF:DATA_OFF + len(frame)].tobytes()


def small_fib():
    """Routes that make longest-prefix match matter: nested prefixes, a /32, a /25 inside a /24, two
    equal prefixes (the later wins), and an adjacency that is not resolved."""
    routes = ([0x0A000000, 0x0A010000, 0x0A010100, 0x0A010180, 0x0A0101FE, 0xC0A80000, 0xC0A80000, 0x14000000],
              [8, 16, 24, 25, 32, 16, 16, 8], [0, 1, 2, 3, 4, 5, 6, 7])
    fib = Fib(routes, 8)
    fib.adj_valid[7] = 0
    return fib


def crafted_frames(fib):
    """Every kind of frame the data plane must survive: valid ones of every size and protocol,
    each malformed kind, and headers at the edges (IHL 15, Ethernet padding, TTL 2)."""
    dst = np.array([0x0A000001, 0x0A010001, 0x0A010101, 0x0A010181, 0x0A0101FE, 0xC0A80101,
                    0x14000001, 0x0B000001], np.uint32)          # every route, an unresolved one, no route
    t = make_traffic(size="imix", flows=64, mix="mixed", malformed=0.3, seed=7, dst=dst)
    frames = [t.frames[i, :t.lengths[i]].tobytes() for i in range(len(t.lengths))]
    base = bytearray(frames[0])
    opts = bytearray(base[:34]) + bytes(40) + base[34:]           # IHL 15: 40 bytes of options
    opts[14] = 0x4F
    opts[16:18] = (len(opts) - 14).to_bytes(2, "big")
    padded = bytearray(base) + bytes(20)                          # total length below the frame's
    for f in (opts, padded):
        f[24:26] = b"\0\0"
        s = sum(int.from_bytes(f[14 + o:16 + o], "big") for o in range(0, (f[14] & 0xF) * 4, 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        f[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
    ttl2 = bytearray(base)
    ttl2[22], ttl2[24:26] = 2, ((int.from_bytes(base[24:26], "big") + 0x3E00) % 0xFFFF).to_bytes(2, "big")
    return frames + [bytes(opts), bytes(padded), bytes(ttl2), base[:14], base[:33], base[:34]]


@needs_xdp
@pytest.mark.parametrize("graph, xdp_fib", [("l2fwd", None), ("ip4", "dir-24-8"), ("ip4", "lpm-trie")])
def test_each_frame_gets_the_graphs_verdict_and_bytes(graph, xdp_fib):
    g = resolve(graph)
    fib = small_fib() if graph == "ip4" else None
    tables = fib.tables() if fib is not None else {}
    frames = crafted_frames(small_fib())
    seen = set()
    with xdprun.load(g, fib, xdp_fib) as prog:
        prog.update("tx_port", struct.pack("<I", 0), struct.pack("<I", socket.if_nametoindex("lo")))
        for frame in frames:
            if len(frame) < 14:                  # (the kernel runs no program on less than an Ethernet header)
                continue
            before = prog.counters("verdicts")
            verdict, out = prog.test_run(frame)
            counted = np.flatnonzero(prog.counters("verdicts") - before).tolist()
            want, want_bytes = reference(g, tables, frame)
            seen.add(want)
            if want == "tx":
                assert (verdict, counted, out) == (XDP_REDIRECT, [len(g.reasons)], want_bytes), frame.hex()
            else:
                assert (verdict, [g.reasons[k] for k in counted]) == (1, [want]), frame.hex()   # XDP_DROP
    # the frames reached every verdict the graph can give them
    assert seen == ({"tx"} if graph == "l2fwd" else
                    {"tx", "unknown_ethertype", "ip4_truncated", "ip4_bad_version", "ip4_bad_ihl", "ip4_bad_length",
                     "ip4_bad_checksum", "ttl_expired", "no_route", "adj_unresolved"})


@pytest.fixture(scope="module")
def lab_net():
    yield from lab_network(f"labkit-xb{os.getpid()}", tap=False)


def _attached():
    return xdp.attached_id(labnet.dut_ns(), labnet.DUT_RX), xdp.attached_id(labnet.gen_ns(), labnet.GEN_RX)


@needs_xdp
@pytest.mark.parametrize("graph, xdp_fib", [("l2fwd", None), ("ip4", None), ("ip4", "lpm-trie")])
def test_a_run_conserves_every_frame_and_drops_as_the_in_memory_nic(lab_net, graph, xdp_fib):
    traffic = dict(size="imix", mix="mixed", malformed=0.3, seed=3, routes=10_000)
    with Lab(backend="xdp", graph=graph, xdp_fib=xdp_fib, **traffic) as lab:
        assert all(_attached())
        res = lab.run(packets=100_000)
    assert _attached() == (0, 0)
    assert res.conserved and res.sent == 100_000 and res.forwarded > 0, res.dropped
    assert res.extra["xdp_fib"] == (None if graph == "l2fwd" else xdp_fib or "dir-24-8")
    with Lab(backend="memory", graph=graph, **traffic) as lab:
        mem = lab.run(packets=100_000)
    # veth takes no frame shorter than an Ethernet header: what the graph calls a runt never leaves
    runt = "macswap_runt" if graph == "l2fwd" else "eth_runt"
    unsendable = res.dropped.pop("gen_unsendable")
    assert unsendable == mem.dropped.pop(runt) > 0
    assert res.dropped == {r: n for r, n in mem.dropped.items() if r not in NIC_SIDE_DROPS}
    assert res.forwarded == mem.forwarded
    # the program ran once on every frame the link took, and handed on those that came back
    assert res.extra["xdp_runs"] == res.sent - unsendable
    assert res.extra["xdp_redirected"] == res.forwarded
    assert res.runtime[0].packets == res.extra["xdp_runs"] > 0 and res.dut_cycles > 0


@needs_xdp
def test_without_napi_at_the_peer_every_forwarded_frame_is_lost_and_counted(lab_net, monkeypatch):
    monkeypatch.setattr(xdprun, "PEER", None)
    with Lab(backend="xdp", graph="l2fwd") as lab:
        res = lab.run(packets=10_000)
    # (measured on Linux 6.18: the redirect itself fails, lk-d0's rx_dropped, not lk-d1's tx_dropped)
    assert res.forwarded == 0 and res.dropped == {"xdp_redirect_failed": 10_000} and res.conserved


@needs_xdp
def test_an_exception_or_a_sigkill_leaves_nothing_attached(lab_net):
    with pytest.raises(ZeroDivisionError):
        with Lab(backend="xdp", graph="l2fwd"):
            assert all(_attached())
            1 / 0
    assert _attached() == (0, 0)
    code = textwrap.dedent("""
        import sys, time
        from labkit.run.lab import Lab
        lab = Lab(backend="xdp", graph="ip4", routes=1000)
        print("ready", flush=True)
        time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert all(_attached())
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert _attached() == (0, 0)          # the BPF links died with the process


def test_bad_requests_say_what_to_use():
    with pytest.raises(LabError, match="backend xdp runs the graphs l2fwd and ip4"):
        Lab(backend="xdp", graph="acl")
    with pytest.raises(LabError, match="workers=2 with backend xdp"):
        Lab(backend="xdp", graph="l2fwd", workers=2)
    with pytest.raises(LabError, match="xdp_fib='hash': use dir-24-8 or lpm-trie"):
        Lab(backend="xdp", graph="ip4", xdp_fib="hash")
    with Lab(backend="memory", graph="ip4", xdp_fib="lpm-trie", routes=1000) as lab:
        assert any("xdp_fib=lpm-trie chooses ip4's FIB in the XDP program" in n for n in lab.notes)


@needs_xdp
def test_the_command_prints_one_conserving_json_object(lab_net):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "labkit", "run", "--backend", "xdp", "--graph", "ip4", "--packets",
                        "20000", "--malformed", "0.2", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["backend"] == "xdp" and res["extra"]["program"] == "ip4"
    assert res["sent"] == 20_000 == res["forwarded"] + sum(res["dropped"].values()) and res["dropped"]


@needs_xdp
def test_the_dashboard_measures_veth_beside_xdp(lab_net, monkeypatch):
    from labkit.course.dashboard import Dashboard, pick_backend
    monkeypatch.setenv("LABKIT_QUICK", "1")
    assert pick_backend("xdp")[0] == "xdp"
    d = Dashboard("backend", ["veth", "xdp"], graph="l2fwd", panels=("mpps", "cpu", "kernel_cpu"))
    d.run()
    assert not d.errors and {r["value"] for r in d.results} == {"veth", "xdp"}
    for r in d.results:
        assert r["conserved"] and r["sent"] > 0 and r["backend"] == r["value"]
    assert "XDP (in the kernel)" in d.figure().to_json()


def test_the_dashboard_says_why_xdp_is_not_there(monkeypatch):
    from labkit.course import dashboard
    from labkit.nic import labnet
    monkeypatch.setattr(labnet, "why_not", lambda tap=False: None)
    monkeypatch.setattr(xdp, "why_not", lambda: "clang is not installed (apt-get install clang libbpf-dev)")
    with pytest.raises(ValueError, match="backend 'xdp' is not available here: clang is not installed"):
        dashboard.pick_backend("xdp")


@needs_xdp
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_detach_the_programs(lab_net, sig, code):
    import time
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "labkit", "run", "--backend", "xdp", "--graph", "l2fwd", "--seconds",
                          "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        give_up = time.monotonic() + 120
        while not all(_attached()) and p.poll() is None and time.monotonic() < give_up:
            time.sleep(0.05)
        assert all(_attached()), p.stderr.read() if p.poll() is not None else "not attached in time"
        time.sleep(0.5)                                       # (running)
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code and "Traceback" not in err, err
    assert _attached() == (0, 0)


@needs_xdp
def test_latency_through_the_kernel(lab_net):
    with Lab(backend="xdp", graph="l2fwd", latency=True, rate=20_000) as lab:
        res = lab.run(packets=5_000)
    lt = res.latency
    assert res.conserved and lt["samples"] + lt["unstamped"] == res.forwarded == 5_000
    assert 0 < lt["p50"] <= lt["p99"] <= lt["max"] and lt["load"].startswith("open loop")
