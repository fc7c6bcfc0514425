"""``labkit bench veth`` (labkit.bench.net): frames, the bridge, the whole run.

Needs root and the lab network (skipped otherwise, with the reason). Every
test uses a lab network of its own prefix and removes it. No test asserts a
rate: only bytes, counts, structure and that everything is put back.
"""
import io
import json
import os
import re
import socket
import subprocess
import time
from contextlib import redirect_stdout

import pytest
from pyroute2 import netns

from labkit.bench import latency as lb
from labkit.bench import napi as napi_bench
from labkit.bench import paths as paths_bench
from labkit.bench import net as nb
from labkit.nic import labnet

WHY = labnet.why_not()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"needs the lab network: {WHY}")
P = f"labkit-tnb{os.getpid()}"
HAVE_TRAFGEN = nb.tools()["trafgen"] is not None


@pytest.fixture(scope="module")
def net():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_NET_PREFIX", P)
        try:
            labnet.up(tap=False, p=P)
            _wait_carrier()
            yield P
        finally:
            labnet.down(P)
    assert not [ns for ns in netns.listnetns() if ns.startswith(P + "-")]


def _wait_carrier(timeout=5.0):
    """A new veth pair gets its carrier a moment after both ends are up (linkwatch)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        out = "".join(subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True,
                                     text=True).stdout for ns in (labnet.gen_ns(P), labnet.dut_ns(P)))
        if "NO-CARRIER" not in out:
            return
        time.sleep(0.05)


# -- the frames ------------------------------------------------------------------------

def _csum(b):
    b = bytes(b) + b"\0" * (len(b) % 2)
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def check_frame(f):
    """A 60-byte Ethernet/IPv4/UDP frame from the generator to the DUT, checksums right."""
    assert len(f) == nb.FRAME == 60
    assert f[0:6] == bytes.fromhex("020000000001")            # dst: the DUT
    assert f[6:12] == bytes.fromhex("020000000002")           # src: the generator
    assert f[12:14] == b"\x08\x00"                             # IPv4
    ip = f[14:34]
    assert ip[0] == 0x45 and int.from_bytes(ip[2:4], "big") == 60 - 14
    assert ip[9] == 17                                         # UDP
    assert _csum(ip) == 0xFFFF                                 # header checksum verifies
    udp = f[34:60]
    assert int.from_bytes(udp[4:6], "big") == len(udp)
    pseudo = ip[12:20] + b"\x00\x11" + len(udp).to_bytes(2, "big")
    assert int.from_bytes(udp[6:8], "big") != 0 and _csum(pseudo + udp) == 0xFFFF


def test_trafgen_config_holds_the_labkit_frames():
    t = nb.traffic()
    frames = nb.parse_trafgen_config(nb.trafgen_config(t))
    assert len(frames) == t.seq.size
    for i in range(0, len(frames), 97):
        check_frame(frames[i])
        assert frames[i] == t.frame(int(t.seq[i]))              # labkit's send order
    assert len({f for f in frames}) == t.spec["flows"]          # every flow, none twice as another


@pytest.mark.skipif(not HAVE_TRAFGEN, reason=f"trafgen not installed ({nb.INSTALL})")
def test_trafgen_sends_the_frame_of_the_config(net, tmp_path):
    t = nb.traffic()
    conf = tmp_path / "one.cfg"
    conf.write_text(nb.trafgen_config(t, n=1))
    want = nb.parse_trafgen_config(conf.read_text())[0]
    with labnet.in_netns(labnet.dut_ns(P)):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))   # ETH_P_ALL
        s.bind((labnet.DUT_RX, 3))
    try:
        s.settimeout(10)
        r = subprocess.run(["ip", "netns", "exec", labnet.gen_ns(P), "trafgen", "--dev", labnet.GEN_TX,
                            "--conf", str(conf), "--cpus", "1", "--num", "1", "--no-sock-mem",
                            "--notouch-irq"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert nb.parse_trafgen(r.stdout)["packets"] == 1
        got = s.recv(2048)
    finally:
        s.close()
    check_frame(got)
    assert got == want


def test_parsers_read_the_tools_statistics():
    tg = nb.parse_trafgen("  4096 packets to schedule\n\n\r     997376 packets outgoing\n"
                          "\r    59842560 bytes outgoing\n\r           1 sec, 985798 usec on CPU0 (997376 packets)\n")
    assert tg == {"packets": 997376, "seconds": 1.985798, "cpu": 0}
    ns = nb.parse_netsniff("Running!\n\r     1054200  packets incoming (8 unread on exit)\n"
                           "\r     1054205  packets passed filter\n\r           3  packets failed filter "
                           "(out of space)\n")
    assert ns == {"received": 1054200, "dropped": 3, "unread": 8}
    with pytest.raises(nb.BenchError):
        nb.parse_trafgen("Running! Hang up with ^C!")


# -- the bridge --------------------------------------------------------------------------

def _state():
    """Everything the bridge run touches, minus the counters."""
    st = labnet.status(P)["namespaces"]
    for ports in st.values():
        for port in ports.values():
            for k in ("rx_packets", "tx_packets", "rx_dropped", "tx_dropped"):
                port.pop(k)
    dns = labnet.dut_ns(P)
    links = subprocess.run(["ip", "-n", dns, "-d", "-o", "link", "show"], capture_output=True, text=True).stdout
    # (the drop program is loaded again: same tag, a new id)
    filters = {i: re.sub(r" id \d+ ", " id N ", subprocess.run(
        ["tc", "-n", dns, "filter", "show", "dev", i, "ingress"], capture_output=True, text=True).stdout)
        for i in (labnet.DUT_RX, labnet.DUT_TX)}
    return st, links, filters, nb._br_nf(dns)


def test_bridge_forwards_and_leaves_the_network_as_it_was(net):
    before = _state()
    assert before[0][labnet.dut_ns(P)][labnet.DUT_RX]["ingress_drop"]
    gen = nb._Gen(P, nb.traffic(), batch=16)
    try:
        with nb.kernel_bridge(P):
            links = subprocess.run(["ip", "-n", labnet.dut_ns(P), "-o", "link", "show", "master", nb.BRIDGE],
                                   capture_output=True, text=True).stdout
            assert labnet.DUT_RX in links and labnet.DUT_TX in links
            assert not labnet.is_up(P)                        # the drops are off for the run
            r = gen.run(0.1, wait_rx=True)
    finally:
        gen.close()
    assert r["sent"] > 0 and r["received"] > 0                # the kernel forwarded them back
    assert r["received"] <= r["sent"]
    assert _state() == before
    assert labnet.is_up(P)


def test_the_router_forwards_and_leaves_the_network_as_it_was(net):
    before = _state()
    dns = labnet.dut_ns(P)
    gen = nb._Gen(P, nb.traffic(), batch=16)
    try:
        with paths_bench.kernel_router(P):
            assert not labnet.is_up(P)                        # the drops are off for the run
            assert paths_bench._sysctls(dns)["ipv4/ip_forward"] == 1
            r = gen.run(0.1, wait_rx=True)
        with pytest.raises(RuntimeError, match="boom"):
            with paths_bench.kernel_router(P):
                raise RuntimeError("boom")
    finally:
        gen.close()
    assert r["sent"] > 0 and r["sent"] >= r["received"] > 0   # the kernel routed them back
    assert _state() == before
    assert paths_bench._sysctls(dns)["ipv4/ip_forward"] == 0
    addrs = subprocess.run(["ip", "-n", dns, "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    assert "10.255." not in addrs


def test_bridge_is_removed_when_the_run_fails(net):
    before = _state()
    with pytest.raises(RuntimeError, match="boom"):
        with nb.kernel_bridge(P):
            raise RuntimeError("boom")
    assert _state() == before
    r = subprocess.run(["ip", "-n", labnet.dut_ns(P), "link", "show", nb.BRIDGE], capture_output=True)
    assert r.returncode != 0                                  # no bridge left


# -- the whole run -------------------------------------------------------------------------

def _tools_running():
    """pids of every trafgen and netsniff-ng process on the machine."""
    out = set()
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/comm") as f:
                if f.read().strip() in ("trafgen", "netsniff-ng"):
                    out.add(int(d))
        except OSError:
            continue
    return out


def _quick(monkeypatch, missing_tools=False, args=()):
    q = f"{P}-q"
    monkeypatch.setattr(nb, "PREFIX", q)
    if missing_tools:
        monkeypatch.setattr(nb, "tools", lambda: {"trafgen": None, "netsniff-ng": None})
    out = io.StringIO()
    running = _tools_running()
    t0 = time.monotonic()
    with redirect_stdout(out):
        rc = nb.main(["--quick", "--runs", "1", "--seconds", "0.2", "--json", *args])
    assert rc == 0
    assert time.monotonic() - t0 < 60
    assert not [ns for ns in netns.listnetns() if ns.startswith(q + "-")]     # made, then removed
    assert not _tools_running() - running                                    # none left behind
    return json.loads(out.getvalue())


def _runs(*summaries):
    return [r for d in summaries for r in d["runs"]]


def _labkit_sections(res):
    # Every configuration ran once and reported. Counts are checked per section:
    # on a busy shared machine one 0.2 s run may get no CPU at all.
    tx = _runs(*[res["tx"]["labkit"][str(b)] for b in nb.QUICK_GEN_BATCHES])
    assert len(tx) == len(nb.QUICK_GEN_BATCHES)
    assert all(r["sent"] >= r["delivered"] >= 0 for r in tx) and sum(r["delivered"] for r in tx) > 0
    fw = res["forwarding"]
    lk, br = fw["labkit"]["runs"][0], fw["bridge"]["runs"][0]
    assert lk["sent"] == lk["forwarded"] + sum(lk["dropped"].values()) or not lk["conserved"]
    assert br["sent"] >= br["forwarded"] >= 0 and lk["forwarded"] + br["forwarded"] > 0
    assert "ratio" in fw
    pol = [res["polling"][poll][load] for poll in ("busy", "wait")
           for load in ("full", f"{nb.FIXED_RATE // 1000}k")]
    assert all(d["cpu_percent"] is not None and "conserved" in d["runs"][0] for d in pol)
    assert sum(r["forwarded"] for r in _runs(*pol)) > 0
    cp = [res["copy"][str(size)] for size in nb.QUICK_COPY_SIZES]
    assert all("speedup" in d and d["zero_copy"]["runs"][0]["cycles_per_packet"] >= 0 for d in cp)
    assert sum(r["forwarded"] for d in cp for r in _runs(d["zero_copy"], d["copy"])) > 0
    assert [t["target"].split(":")[0] for t in res["targets"]] == ["RX", "TX", "forwarding"]
    _fanout_section(res)


def _fanout_section(res):
    fo = res["fanout"]
    for n in nb.FANOUT_WORKERS:
        d = fo[f"workers_{n}"]
        r = d["runs"][0]
        assert r["sent"] == r["forwarded"] + sum(r["dropped"].values()) or not r["conserved"]
        assert len(d["worker_cpu_percent"]) == len(r["worker_sent"]) == n
        assert abs(sum(d["worker_share"]) - 1.0) < 1e-9 or sum(r["worker_sent"]) == 0
    assert "ratio" in fo
    assert fo["hash"]["software_toeplitz_cycles_per_frame"] > 0 and "tp_rxhash" in fo["hash"]["kernel"]


# every section but latency, napi and paths (their own tests below): one quick run of all would take minutes
ALL_BUT_LATENCY = ("--only", ",".join(x for x in nb.SECTIONS if x not in ("latency", "napi", "paths")))


@pytest.mark.skipif(not HAVE_TRAFGEN, reason=f"trafgen and netsniff-ng not installed ({nb.INSTALL})")
def test_quick_run_measures_every_section(monkeypatch):
    res = _quick(monkeypatch, args=ALL_BUT_LATENCY)
    assert set(res) >= {"meta", "rx", "tx", "forwarding", "polling", "copy", "targets"}
    rx = _runs(res["rx"]["labkit"], res["rx"]["netsniff-ng"])
    assert all(r["sent"] > 0 and r["arrived"] >= r["received"] >= 0 for r in rx)   # trafgen sent
    assert sum(r["received"] for r in rx) > 0
    assert "ratio" in res["rx"] and res["tx"]["trafgen"]["runs"][0]["delivered"] > 0
    _labkit_sections(res)


def test_quick_run_without_the_c_tools(monkeypatch):
    res = _quick(monkeypatch, missing_tools=True, args=ALL_BUT_LATENCY)
    assert "not_measured" in res["rx"]["netsniff-ng"] and "not_measured" in res["tx"]["trafgen"]
    assert res["rx"]["ratio"] is None and res["tx"]["ratio"] is None
    _labkit_sections(res)
    rx, tx, fw = res["targets"]
    assert rx["met"] is None and tx["met"] is None and "not_measured" in res["rx"]["labkit"]


def test_only_runs_the_sections_asked_for(monkeypatch):
    res = _quick(monkeypatch, args=("--only", "fanout"))
    assert set(res) == {"meta", "fanout", "targets"} and res["targets"] == []
    assert res["meta"]["sections"] == ["fanout"]
    _fanout_section(res)
    out = io.StringIO()
    nb._print(res, out)
    assert "6. Fanout" in out.getvalue() and "1. RX" not in out.getvalue()


def test_latency_section(monkeypatch):
    res = _quick(monkeypatch, args=("--only", "latency"))
    lt = res["latency"]
    assert set(lt["configurations"]) == {f"{p} {g} {lb.load_name(r)}" for p in lb.POLLS for g in lb.RINGS
                                         for r in lb.QUICK_LOADS}
    for d in lt["configurations"].values():
        r = d["runs"][0]
        assert r["conserved"] and (r["samples"] == 0 or r["p50_ns"] <= r["p99_ns"] <= r["max_ns"])
    assert all(lt["stamping"][x]["runs"][0]["conserved"] for x in ("off", "every", "sampled"))
    assert [t["target"].split(":")[0] for t in res["targets"]] == ["latency"] * 5
    assert res["targets"][1]["limit"] == "<= 30%"
    assert res["targets"][3]["limit"] == "<= 5%" and res["targets"][0]["limit"] == ">= 5x"
    out = io.StringIO()
    nb._print(res, out)
    assert "7. latency" in out.getvalue() and "10. targets" in out.getvalue()


def test_napi_section(monkeypatch):
    res = _quick(monkeypatch, args=("--only", "napi"))
    nq = res["napi"]
    assert set(nq["paths"]) == {f"{n} wait 10k" for n in napi_bench.NAPIS}
    assert set(nq["livelock"]) == {f"livelock {n} saturation" for n in napi_bench.LIVELOCK_NAPIS}
    runs = [r for d in (*nq["paths"].values(), *nq["livelock"].values(), *nq["busy_poll"]["with"].values())
            for r in d["runs"]]
    assert all(r["conserved"] and r["sent"] == r["forwarded"] + sum(r["dropped"].values()) for r in runs)
    assert all(r["p50_ns"] <= r["p99_ns"] for d in nq["paths"].values() for r in d["runs"])
    assert all(r["p50_ns"] is None for d in nq["livelock"].values() for r in d["runs"])   # ip4: not stamped
    assert set(nq["busy_poll"]["with"]) == {str(us) for us in napi_bench.QUICK_BUSY_POLL_USS} and nq["busy_poll"]["napi_id"] == 0
    assert res["targets"] == []
    out = io.StringIO()
    nb._print(res, out)
    assert "8. the kernel's receive path" in out.getvalue() and "livelock" in out.getvalue()


def test_paths_section(monkeypatch):
    res = _quick(monkeypatch, args=("--only", "paths"))
    pa = res["paths"]
    quick = [name for name, _, kw in paths_bench.PATHS if kw.get("napi") != "threaded" and "xdp_fib" not in kw]
    assert list(pa["paths"]) == quick + list(paths_bench.NOT_BUILT)
    assert pa["paths"]["labkit AF_XDP"] == {"not_measured": paths_bench.NOT_BUILT["labkit AF_XDP"]}
    for name in quick:
        r = pa["paths"][name]["runs"][0]
        if "conserved" in r:                                  # a Lab: the books balance
            assert r["conserved"] and r["sent"] == r["forwarded"] + sum(r["dropped"].values()), name
            assert (r["program_cycles_per_packet"] is None) == ("XDP" not in name)
        else:                                                 # the kernel's router or bridge
            assert r["sent"] >= r["forwarded"] and r["dut_cpu_percent"] == 0, name
    assert sum(pa["paths"][name]["runs"][0]["forwarded"] for name in quick) > 0
    assert [t["target"] for t in res["targets"]] == ["paths: XDP l2fwd / labkit l2fwd on AF_PACKET rings"]
    out = io.StringIO()
    nb._print(res, out)
    assert "9. paths" in out.getvalue() and "not measured" in out.getvalue()


def test_only_with_an_unknown_section_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        nb.main(["--only", "fanout,bogus"])
    assert e.value.code == 2
    assert "use some of rx,tx,forwarding,polling,copy,fanout,latency,napi,paths" in capsys.readouterr().err


def test_the_neighbours_are_measured():
    a = nb._proc_times()
    assert os.getpid() in a and all(t >= 0 for _, t, _name in a.values())
    assert nb.others_cpu_percent(a, nb._proc_times(), 0.1) >= 0
    assert 0 <= nb.wait_quiet(0.0, window=0.05) < 5


def test_no_lab_network_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(labnet, "why_not", lambda: "not root (test)")
    assert nb.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "not root (test)" in err and len(err.strip().splitlines()) == 1
