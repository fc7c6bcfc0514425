"""The kernel's receive path on veth (labkit.nic.napi, the knobs napi and busy_poll_us):
each path is set while a Lab runs and put back afterwards, every frame is accounted
for on each, and the run says when the kernel could not busy-poll."""
import os
import socket

import pytest
from conftest import lab_network

from labkit import Knobs
from labkit.nic import labnet, napi
from labkit.run.knobs import KnobError
from labkit.run.lab import Lab


def test_the_knobs_say_what_they_take():
    for bad in (dict(napi="sometimes"), dict(napi=True), dict(busy_poll_us=-1), dict(busy_poll_us=1001),
                dict(busy_poll_us=1.5), dict(busy_poll_us=True)):
        with pytest.raises(KnobError, match=next(iter(bad))):
            Knobs(**bad)
    assert Knobs(napi="threaded", busy_poll_us=50).busy_poll_us == 50


WHY = labnet.why_not(tap=True)
needs_net = pytest.mark.skipif(WHY is not None, reason=f"needs the lab network: {WHY}")


@pytest.fixture(scope="module")
def lab_net():
    yield from lab_network(f"labkit-n{os.getpid()}")


def _state():
    """(the sender's TSO, the DUT end's GRO, its threaded NAPI, its NAPI threads)."""
    g, d = (labnet.gen_ns(), labnet.GEN_TX), (labnet.dut_ns(), labnet.DUT_RX)
    return (napi.ethtool(*g, napi.ETHTOOL_GTSO), napi.ethtool(*d, napi.ETHTOOL_GGRO), napi.sysfs(*d, "threaded"),
            len(napi._napi_threads(labnet.DUT_RX)))


@needs_net
@pytest.mark.parametrize("mode, during", [("off", (1, 0, "0", 0)), ("gro", (0, 1, "0", 0)),
                                          ("threaded", (0, 1, "1", 1))])
def test_each_receive_path_is_set_for_the_run_and_put_back(lab_net, mode, during):
    before = _state()
    assert before == (1, 0, "0", 0)
    with Lab(backend="veth", graph="l2fwd", knobs=Knobs(napi=mode, poll="wait", rx_ring="frame"), latency=True) as lab:
        assert _state() == during
        r = lab.run(packets=20_000)
    assert _state() == before
    assert r.sent == 20_000 and r.conserved and r.pool_ok, (r.forwarded, r.dropped)
    assert r.extra["napi"] == mode and r.latency["samples"] == r.forwarded
    assert r.extra["softirq_cpu_percent"] >= 0 and r.extra["napi_thread_cpu_percent"] >= 0


@needs_net
def test_what_the_user_set_is_put_back_too(lab_net):
    d = (labnet.dut_ns(), labnet.DUT_RX)
    napi.ethtool(*d, napi.ETHTOOL_SGRO, 1)           # a student's `ethtool -K lk-d0 gro on`
    try:
        with Lab(backend="veth", graph="l2fwd", knobs=Knobs(napi="off")):
            assert napi.ethtool(*d, napi.ETHTOOL_GGRO) == 0
        assert napi.ethtool(*d, napi.ETHTOOL_GGRO) == 1
        with pytest.raises(ZeroDivisionError), napi.receive_path("threaded", (labnet.gen_ns(), labnet.GEN_TX), d):
            assert napi.sysfs(*d, "threaded") == "1"
            1 / 0
        assert napi.sysfs(*d, "threaded") == "0" and napi.ethtool(*d, napi.ETHTOOL_GGRO) == 1
    finally:
        napi.ethtool(*d, napi.ETHTOOL_SGRO, 0)


def _busy_poll_sysctl():
    with open(napi.BUSY_POLL_SYSCTL) as f:
        return int(f.read())


@needs_net
def test_busy_polling_is_asked_for_and_the_run_says_what_the_kernel_could_do(lab_net):
    before = _busy_poll_sysctl()
    with Lab(backend="veth", graph="l2fwd", knobs=Knobs(napi="gro", poll="wait", busy_poll_us=50)) as lab:
        (s,) = lab.net.rx_socks
        assert s.getsockopt(socket.SOL_SOCKET, napi.SO_BUSY_POLL) == 50
        assert s.getsockopt(socket.SOL_SOCKET, napi.SO_PREFER_BUSY_POLL) == 1
        assert _busy_poll_sysctl() == max(before, 50)
        r = lab.run(packets=5000)
    assert _busy_poll_sysctl() == before
    assert r.conserved and r.extra["busy_poll_us"] == 50
    assert r.extra["dut_napi_id"] == 0 and any("no NAPI ID" in n and "spun" in n for n in r.notes)
    with Lab(backend="veth", graph="l2fwd", knobs=Knobs(napi="gro")) as lab:
        r = lab.run(packets=5000)
    assert r.conserved and not any("NAPI ID" in n for n in r.notes)


@needs_net
def test_the_tap_says_the_knobs_are_not_its_own(lab_net):
    with Lab(backend="tap", graph="l2fwd", knobs=Knobs(napi="gro", busy_poll_us=20)) as lab:
        r = lab.run(packets=2000)
    assert r.conserved
    assert any("napi=gro" in n and "TAP" in n for n in r.notes)
    assert any("busy_poll_us" in n and "tap port" in n for n in r.notes)


@needs_net
def test_bad_requests_say_what_is_wrong(lab_net):
    d = (labnet.dut_ns(), labnet.DUT_RX)
    with pytest.raises(labnet.NetError, match="lk-nope"):
        napi.ethtool(d[0], "lk-nope", napi.ETHTOOL_GGRO)
    with pytest.raises(labnet.NetError, match="no_such_attr"):
        napi.sysfs(*d, "no_such_attr")
    with pytest.raises(labnet.NetError, match="NAPI mode"):
        with napi.receive_path("sometimes", d, d):
            pass


@needs_net
def test_the_command_shows_the_kernels_share(lab_net):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "labkit", "run", "--backend", "veth", "--graph", "l2fwd", "--napi",
                        "threaded", "--poll", "wait", "--packets", "5000"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "kernel receive CPU" in p.stdout and "NAPI thread" in p.stdout and "softirq" in p.stdout
    assert _state() == (1, 0, "0", 0)
