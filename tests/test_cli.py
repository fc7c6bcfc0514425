"""The `labkit` command, run as a user runs it: in a subprocess.

User errors exit 2 with one line on stderr and no traceback; --json prints
exactly one JSON object on stdout; every run conserves packets.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import cli
from labkit.run.knobs import TECHNIQUES, WORKER_TECHNIQUES

ROOT = Path(__file__).resolve().parents[1]


def labkit(*args, extra_env=None, timeout=300, cache=None):
    """`labkit args...` in a subprocess; with `cache`, every cache of it (generated
    source, numba's kernels) in that folder, not the test session's."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("COLUMNS", None)
    if cache is not None:
        env["LABKIT_CACHE_DIR"] = str(cache)
        env.pop("NUMBA_CACHE_DIR", None)        # (conftest points numba at the session's cache)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "labkit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# -- user errors: exit 2, one line, no traceback ------------------------------

BAD = [
    ["run", "--bogus"],
    ["run", "--batch", "0"],
    ["run", "--batch", "999"],
    ["run", "--batch", "abc"],
    ["run", "--unroll", "3"],
    ["run", "--layout", "x"],
    ["run", "--graph", "nope"],
    ["run", "--backend", "nope"],
    ["run", "--rate", "0"],
    ["run", "--gen-batch", "300"],
    ["run", "--poll", "sometimes"],
    ["run", "--rx-ring", "v2"],
    ["run", "--coalesce-ms", "0"],
    ["run", "--coalesce-ms", "2000"],
    ["run", "--block-kb", "48"],
    ["run", "--napi", "sometimes"],
    ["run", "--backend", "xdp", "--graph", "acl"],      # (root and clang: the graph; else: what is missing)
    ["run", "--backend", "xdp", "--workers", "2"],
    ["run", "--backend", "xdp", "--xdp-fib", "hash"],
    ["run", "--busy-poll-us", "-1"],
    ["run", "--busy-poll-us", "5000"],
    ["run", "--latency", "yes"],
    ["run", "--size", "10"],
    ["run", "--size", "5000"],
    ["run", "--size", "big"],
    ["run", "--flows", "0"],
    ["run", "--malformed", "2"],
    ["run", "--malformed", "-0.1"],
    ["run", "--pcap", "/nonexistent"],
    ["run", "--out", "/nonexistent/dir/out.pcap"],
    ["run", "--seconds", "-1"],
    ["run", "--seconds", "0"],
    ["run", "--packets", "0"],
    ["run", "--seconds", "1", "--packets", "5"],
    ["run", "--mix", "icmp"],
    ["run", "--loop", "0"],
    ["run", "--loop", "-1"],
    ["run", "--loop", "x"],
    ["run", "--loop", "2"],                          # without --pcap
    ["runtime", "--loop", "2"],
    ["run", "--loop", "2", "--seconds", "1"],
    ["run", "--loop", "2", "--packets", "5"],
    ["runtime", "--batch", "0"],
    ["trace", "-n", "0"],
    ["demo", "--backend", "nope"],
    ["net", "sideways"],
    ["demo", "--graph", "nope"],
    ["demo", "--seconds", "-1"],
    ["demo", "--repeats", "0"],
    ["demo", "--quiet-wait", "-1"],
    ["nope"],
    [],
]


@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a) or "(none)")
def test_user_error_is_one_line_and_exit_2(args):
    p = labkit(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("labkit: error: ")
    assert p.stdout == ""


def _without_net_admin(*args, **kw):
    """labkit run as root but without CAP_NET_ADMIN, as an unprivileged student is."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv(1) to drop a capability")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(["setpriv", "--bounding-set=-net_admin", "--", sys.executable, "-m", "labkit", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("backend", ["veth", "tap", "xdp"])
def test_real_nic_without_the_right_says_why_in_one_line(backend):
    p = _without_net_admin("run", "--backend", backend)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (f"labkit: error: backend {backend} is not available here: not root and no "
                                f"CAP_NET_ADMIN (run with sudo, or use --backend memory)")


def test_xdp_without_clang_says_what_to_install():
    p = labkit("run", "--backend", "xdp", extra_env={"PATH": "/nonexistent"})
    assert p.returncode == 2, p.stderr
    if os.geteuid() == 0:
        assert p.stderr.strip() == ("labkit: error: backend xdp is not available here: clang is not installed "
                                    "(apt-get install clang libbpf-dev)")
    else:
        assert p.stderr.startswith("labkit: error: backend xdp is not available here: ")


def test_net_up_without_the_right_says_why():
    p = _without_net_admin("net", "up")
    assert p.returncode == 2 and "CAP_NET_ADMIN" in p.stderr and "Traceback" not in p.stderr


def test_auto_falls_back_to_the_in_memory_nic_and_says_why():
    p = _without_net_admin("run", "--backend", "auto", "--packets", "1000", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["backend"] == "memory"
    assert "auto: using the in-memory NIC, not veth: not root and no CAP_NET_ADMIN" in p.stderr


def test_bad_knob_names_the_range():
    assert "1 to 256" in labkit("run", "--batch", "999").stderr


def test_version():
    p = labkit("--version")
    assert p.returncode == 0 and p.stdout.strip() == "labkit 0.1.0"


def test_size_limits_match_the_traffic_module():
    from labkit.memory.layouts import MAX_FRAME_DEFAULT
    from labkit.nic.traffic import MIN_FRAME
    assert (cli.SIZE_MIN_BYTES, cli.SIZE_MAX_BYTES) == (MIN_FRAME, MAX_FRAME_DEFAULT)


# -- runs ----------------------------------------------------------------------

REQUIRED = {"backend", "graph", "batch", "knobs", "sent", "forwarded", "dropped", "pps", "mpps",
            "cycles_per_packet", "tsc_hz", "seconds", "conserved", "pool_ok", "runtime", "notes"}


def run_json(*args):
    p = labkit(*args, "--json")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stdout.strip().splitlines()) == 1, "stdout must be exactly one JSON object"
    return json.loads(p.stdout)


def graph_nodes(graph):
    from labkit.run.lab import GRAPHS
    return list(GRAPHS[graph])


@pytest.mark.parametrize("graph", ["l2fwd", "ip4", "acl"])
def test_run_json_conserves_packets(graph):
    r = run_json("run", "--graph", graph, "--packets", "20000")
    assert REQUIRED <= set(r)
    assert r["graph"] == graph and r["backend"] == "memory"
    assert r["sent"] >= 20000
    assert r["sent"] == r["forwarded"] + sum(r["dropped"].values())
    assert r["conserved"] and r["pool_ok"]
    assert r["mpps"] > 0 and r["cycles_per_packet"] > 0
    assert set(graph_nodes(graph)) <= {row["node"] for row in r["runtime"]}


def test_run_knob_flags_reach_the_lab():
    r = run_json("run", "--packets", "3000", "--batch", "32", "--no-prefetch", "--prefetch-distance", "9",
                 "--unroll", "2", "--interleave", "--layout", "aos", "--copy", "--no-mempool", "--no-hugepages", "--variant", "branchless",
                 "--order", "shuffled", "--malformed", "0.3", "--poll", "adaptive", "--rx-ring", "frame",
                 "--coalesce-ms", "3", "--block-kb", "16", "--napi", "threaded", "--busy-poll-us", "40")
    assert r["batch"] == 32
    assert r["knobs"] == {"batch": 32, "jit": True, "copy": True, "mempool": False, "hugepages": False,
                          "prefetch": False, "prefetch_distance": 9, "unroll": 2, "interleave": True, "layout": "aos",
                          "poll": "adaptive", "rx_ring": "frame", "coalesce_ms": 3, "block_kb": 16, "napi": "threaded",
                          "busy_poll_us": 40, "qdisc_bypass": True,
                          "sync": "spsc", "counters": "padded", "variant": "branchless", "model": "rtc"}
    assert r["conserved"] and r["pool_ok"] and sum(r["dropped"].values()) > 0
    assert any("knob rx_ring applies to a real NIC" in n for n in r["notes"])
    assert any("knob napi applies to a real NIC" in n for n in r["notes"])


@pytest.mark.parametrize("model", ["pipeline", "lthreads", "threads"])
def test_run_model_flag_runs_the_stages(model):
    r = run_json("run", "--packets", "20000", "--model", model)
    assert r["knobs"]["model"] == model and r["extra"]["model"] == model
    assert r["sent"] == r["forwarded"] == 20000 and r["conserved"] and r["pool_ok"]
    assert r["extra"]["dispatcher"] and len(r["extra"]["workers"]) == 1
    # lightweight and OS threads switch stages after every burst (of at most 256 frames, so at least
    # 79 per stage); a pipeline's stages never give way, and only OS threads call sched_yield
    bursts = -(-20000 // 256)
    if model == "lthreads":
        assert r["extra"]["switches"] >= 2 * bursts and r["extra"]["yields"] == 0
    elif model == "threads":
        assert r["extra"]["yields"] >= 2 * bursts
    else:
        assert r["extra"]["yields"] == 0


def test_run_workers_prints_a_row_per_queue():
    p = labkit("run", "--packets", "20000", "--workers", "2")
    assert p.returncode == 0, p.stderr
    head = next(ln for ln in p.stdout.splitlines() if ln.strip().startswith("queue"))
    assert head.split() == ["queue", "handled", "Mpps", "TSC", "cyc/pkt", "CPU", "queue", "full"]


def test_run_malformed_mixed_imix_drops_are_counted():
    r = run_json("run", "--packets", "20000", "--size", "imix", "--mix", "mixed", "--malformed", "0.1")
    assert r["dropped"], "malformed frames must show as counted drops"
    assert r["sent"] == r["forwarded"] + sum(r["dropped"].values())


def test_run_seconds():
    r = run_json("run", "--graph", "l2fwd", "--seconds", "0.2")
    assert 0.1 < r["seconds"] < 5 and r["conserved"]


def test_run_human_output():
    p = labkit("run", "--graph", "acl", "--packets", "5000")
    assert p.returncode == 0, p.stderr
    for word in ("sent", "forwarded", "Mpps", "TSC cycles/packet"):
        assert word in p.stdout
    assert "Traceback" not in p.stderr


def test_pcap_out_then_replay(tmp_path):
    out = tmp_path / "fwd.pcap"
    first = run_json("run", "--graph", "l2fwd", "--packets", "500", "--out", str(out))
    assert out.stat().st_size > 24                      # a pcap header and some frames
    again = run_json("run", "--graph", "l2fwd", "--packets", "500", "--pcap", str(out))
    assert first["forwarded"] > 0 and again["forwarded"] == again["sent"]


# -- replaying a capture: once by default, --loop N times, --seconds S over and over ------------

def _capture(path, n, **traffic):
    """A capture of n generated frames, all different (a flow each); returns its frames."""
    from labkit.nic.pcap import PcapWriter, read_frames
    from labkit.nic.traffic import make_traffic
    with PcapWriter(path) as w:
        w.write_traffic(make_traffic(flows=n, seed=3, **traffic), n=n)
    return read_frames(path)


def _swapped(frame):
    """The frame as l2fwd forwards it: destination and source MAC swapped."""
    return frame[6:12] + frame[:6] + frame[12:]


@pytest.mark.parametrize("loop", [None, 1, 3])
def test_pcap_replays_each_frame_once_per_loop_and_out_holds_the_forwarded_frames(tmp_path, loop):
    from labkit.nic.pcap import read_frames
    frames = _capture(tmp_path / "in.pcap", 300)
    more = ["--loop", str(loop)] if loop else []
    r = run_json("run", "--graph", "l2fwd", "--pcap", str(tmp_path / "in.pcap"), "--out", str(tmp_path / "out.pcap"),
                 *more)
    n = loop or 1
    assert r["sent"] == r["forwarded"] == n * len(frames) and r["dropped"] == {}
    assert r["conserved"] and r["pool_ok"]
    assert read_frames(tmp_path / "out.pcap") == [_swapped(f) for f in frames] * n     # in order, MACs swapped


@pytest.mark.parametrize("workers", ["1", "2"])
def test_pcap_replay_with_drops_counts_every_frame(tmp_path, workers):
    from labkit.nic.pcap import read_frames
    frames = _capture(tmp_path / "in.pcap", 400, malformed=0.2, size="imix")
    r = run_json("run", "--graph", "ip4", "--workers", workers, "--pcap", str(tmp_path / "in.pcap"),
                 "--loop", "2", "--out", str(tmp_path / "out.pcap"))
    assert r["sent"] == 2 * len(frames) == r["forwarded"] + sum(r["dropped"].values())
    assert r["dropped"] and r["conserved"] and r["pool_ok"]
    assert len(read_frames(tmp_path / "out.pcap")) == r["forwarded"]


def test_pcap_with_seconds_repeats_the_capture(tmp_path):
    _capture(tmp_path / "in.pcap", 50)
    r = run_json("run", "--graph", "l2fwd", "--pcap", str(tmp_path / "in.pcap"), "--seconds", "0.2")
    assert r["sent"] > 0 and r["sent"] == r["forwarded"] and r["conserved"] and r["pool_ok"]


def test_loop_without_pcap_says_to_give_one(tmp_path):
    p = labkit("run", "--loop", "2")
    assert p.returncode == 2 and "--pcap FILE" in p.stderr
    _capture(tmp_path / "in.pcap", 10)
    p = labkit("run", "--pcap", str(tmp_path / "in.pcap"), "--loop", "2", "--seconds", "1")
    assert p.returncode == 2 and "--seconds" in p.stderr and "--loop" in p.stderr


def test_help_says_what_pcap_and_loop_do():
    text = " ".join(labkit("run", "--help").stdout.split())
    assert "each frame once, in order" in text
    assert "replay the capture N times" in text and "one of --seconds, --packets, --loop" in text


# -- the compile note: said when numba compiles, not when everything is cached -----------------

def test_compile_note_only_when_something_compiles(tmp_path):
    args = ("run", "--graph", "l2fwd", "--packets", "1000", "--json")
    first = labkit(*args, cache=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith(cli.COMPILE_NOTE.split("{")[0])          # first, before the pause
    line = first.stderr.splitlines()[0]
    assert str(tmp_path / "numba") in line and "~/.cache" not in line      # the cache it really uses
    for _ in range(3):
        versions = sorted(os.listdir(tmp_path / "numba"))
        again = labkit(*args, cache=tmp_path)
        assert again.returncode == 0, again.stderr
        # (labkit's source changed in between, e.g. in a checkout being edited: a new version
        # folder, compiled afresh; once more)
        if sorted(os.listdir(tmp_path / "numba")) == versions:
            break
    assert "compiling numba kernels" not in again.stderr, again.stderr


def test_runtime_table():
    p = labkit("runtime", "--graph", "ip4", "--packets", "5000")
    assert p.returncode == 0, p.stderr
    header = next(line for line in p.stdout.splitlines() if "Name" in line).split()
    assert header == ["Name", "Calls", "Vectors", "Vectors/Call", "Clocks"]
    for node in graph_nodes("ip4"):
        assert node in p.stdout


def test_runtime_json():
    r = run_json("runtime", "--graph", "acl", "--packets", "5000")
    assert [row["node"] for row in r["runtime"]][:len(graph_nodes("acl"))] == graph_nodes("acl")
    for row in r["runtime"]:
        assert {"node", "calls", "packets", "vectors_per_call", "cycles_per_packet"} <= set(row)


def test_trace_prints_n_packets():
    p = labkit("trace", "--graph", "ip4", "-n", "3")
    assert p.returncode == 0, p.stderr
    packets = [line for line in p.stdout.splitlines() if line.startswith("Packet ")]
    assert packets == ["Packet 1", "Packet 2", "Packet 3"]
    assert "eth-input" in p.stdout and "=>" in p.stdout


def test_trace_json():
    r = run_json("trace", "--graph", "acl", "-n", "2")
    assert len(r) == 2
    for steps in r:
        assert steps and all({"node", "result"} <= set(s) for s in steps)


def test_demo_json_has_a_row_per_technique():
    p = labkit("demo", "--backend", "memory", "--json", "--seconds", "0.05", "--repeats", "2",
               extra_env={"LABKIT_QUICK": "1"})
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["technique"] for r in rows] == [*TECHNIQUES, *cli.DEMO_WORKERS, *WORKER_TECHNIQUES, *cli.DEMO_PATHS]
    for r in rows:
        if r["technique"] in TECHNIQUES:
            assert r["knob"] == TECHNIQUES[r["technique"]][0]
        elif r["technique"] in cli.DEMO_PATHS:   # XDP: veth, then the graph in its driver
            assert (r["where"], r["knob"], r["off"], r["on"]) == ("xdp", "backend", "veth", "xdp")
            assert r["skipped"] == "needs a real NIC: --backend veth, as root"
            continue
        else:                                    # multi-core rows: several workers on the in-memory NIC
            assert r["where"] == "workers"
            assert r["knob"] == {**WORKER_TECHNIQUES, **cli.DEMO_WORKERS}[r["technique"]][0]
        if r["where"] == "veth":                 # I/O techniques need a real NIC
            assert r["skipped"].startswith("needs a real NIC")
            continue
        assert r["backend"] == "memory"
        # (a 0.05 s pure-Python run on a loaded machine may finish no vector: off may be 0)
        assert r["on_mpps"] > 0 and r["off_mpps"] >= 0
        assert r["speedup"] is None or r["speedup"] > 0
        # repeats, spread, a verdict and the machine's load, for every row (issue 19)
        assert len(r["off_mpps_runs"]) == len(r["on_mpps_runs"]) == 2
        assert r["on_mpps"] == statistics.median(r["on_mpps_runs"])
        assert r["verdict"] == "too few runs"                     # two a side: no verdict (three needed)
        assert r["other_cpu_percent"] is None or r["other_cpu_percent"] >= 0
        assert isinstance(r["busy"], bool) and isinstance(r["busiest"], list)


def test_demo_human_says_which_backend_and_why():
    # the default backend is auto: veth for the I/O rows where it can (in a
    # lab network of this test's own), the in-memory NIC for the rest
    p = labkit("demo", "--seconds", "0.05", "--repeats", "1",
               extra_env={"LABKIT_NET_PREFIX": f"labkit-c{os.getpid()}"})
    assert p.returncode == 0, p.stderr
    assert "in-memory NIC (no root needed)" in p.stderr
    assert "speed-up" in p.stdout and "verdict" in p.stdout and "too few runs" in p.stdout
    for technique in [*TECHNIQUES, *cli.DEMO_WORKERS, *WORKER_TECHNIQUES, *cli.DEMO_PATHS]:
        assert technique in p.stdout
    if os.geteuid() == 0 and shutil.which("clang"):           # the XDP row ran, and says what its cycles are
        assert "XDP in the kernel: its cycles/packet are the XDP program's own" in p.stderr


# -- in-process: delegation and Ctrl-C -------------------------------------------

def test_bench_is_delegated(monkeypatch):
    import types
    seen = []
    fake = types.ModuleType("labkit.bench")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "labkit.bench", fake)
    assert cli.main(["bench", "--x", "1"]) == 7
    assert seen == [["--x", "1"]]


def test_bench_missing_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "labkit.bench", None)     # import raises ImportError
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("labkit: error: labkit bench is not available")


def test_ctrl_c_exits_130_quietly(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, "run", interrupted)
    assert cli.main(["run"]) == 130
    assert capsys.readouterr().err == ""


def test_ctrl_c_during_a_run_exits_130_without_traceback(tmp_path):
    import signal
    import time
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               LABKIT_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_CACHE_DIR", None)        # an empty cache: the run compiles, and says so
    # SIGINT as a terminal's Ctrl-C finds it: a shell without job control starts
    # background jobs (a CI runner's, say) with SIGINT ignored, and children inherit that
    p = subprocess.Popen([sys.executable, "-m", "labkit", "run", "--graph", "l2fwd", "--seconds", "60"], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "compiling numba kernels" in p.stderr.readline()    # main() is running
    # numba writes the run loop's cache index when it has compiled it, just before the run starts
    give_up = time.monotonic() + 240
    while not any(tmp_path.rglob("*.run_slice-*.nbi")) and p.poll() is None and time.monotonic() < give_up:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert out == "" and "Traceback" not in err


def test_an_interrupt_lost_in_a_finalizer_is_raised_again():
    """Python drops an exception raised in a finalizer ("Exception ignored in ..."): a Ctrl-C or
    SIGTERM whose handler fired there would let the run go on. labkit's handlers remember the
    signal, and the run loops' check() raises it again, as the right kind, once."""
    import signal
    from labkit.run import interrupts

    class Finalized:
        def __init__(self, signum):
            self.signum = signum

        def __del__(self):
            interrupts._handler(self.signum, None)    # what the handler does if it fires here

    interrupts.check()                                # nothing pending: nothing raised
    Finalized(signal.SIGINT)                          # the exception is printed and dropped
    with pytest.raises(KeyboardInterrupt) as e:
        interrupts.check()
    assert not isinstance(e.value, interrupts.Terminated)
    interrupts.check()                                # raised once, not twice
    Finalized(signal.SIGTERM)
    with pytest.raises(interrupts.Terminated):
        interrupts.check()
    with pytest.raises(KeyboardInterrupt):            # delivered normally, then handled: not raised again
        interrupts._handler(signal.SIGINT, None)
    interrupts.caught()
    interrupts.check()
