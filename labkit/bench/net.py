"""``labkit bench veth [--quick] [--json] [--runs N] [--seconds S]``: the ring driver on veth.

The AF_PACKET ring driver (``labkit.nic.afpacket``), labkit's generator and its
DUT measured side by side, in one run, on the same veth pairs of a lab
network of their own (prefix ``labkit-bench``; removed at the end if this run
made it), against the C tools and the kernel doing the same job:

1. RX: labkit's RX ring walked by a compiled loop that only counts, against
   ``netsniff-ng`` receiving the same traffic (both with the same 2 MiB ring,
   32 blocks of 64 KiB). The sender is ``trafgen`` on lk-g0, one process, as
   fast as it goes; the receiver sits on lk-d0. Rate = frames received /
   seconds trafgen sent (as trafgen reports them).
2. TX: labkit's generator (``labkit.nic.generator.gen_slice``: TX ring, one
   ``send()`` kick per ``gen_batch`` frames) against ``trafgen``, each pinned
   to the same CPU, as fast as they go; rate = frames lk-d0 received (its
   rx_packets) / seconds the sender ran. labkit at gen_batch 1, 8, 32, 64
   (the Lab's default) and 256.
3. Forwarding: labkit's l2fwd DUT (``Lab("veth", "l2fwd")``, default knobs)
   against the kernel's own forwarding: a Linux bridge in the DUT's namespace
   with lk-d0 and lk-d1 as ports. The same generator (labkit's, gen_batch 64,
   the same frames) drives both; rate = frames back at the generator (lk-g1)
   / seconds. For the bridge run the ingress drop leaves lk-d0 and lk-d1 (tc
   ingress runs before the bridge's rx_handler), the ports get MACs of their
   own (a bridge delivers frames for its ports' MACs locally, it does not
   forward them), the DUT's MAC is a static FDB entry on lk-d1 (known unicast,
   not flooding), and br_netfilter's iptables hooks are off in that namespace
   (the fast bridge, not a firewall). Everything is put back afterwards,
   whatever ends the run.
4. Polling: the DUT busy-polling vs sleeping in ``poll()``: rate and the DUT
   thread's CPU%, at full rate and at a fixed rate (100 kpps).
5. Zero-copy vs copy (the ``copy`` knob: ring vs one ``recv()``/``send()``
   per frame) across frame sizes: rate and TSC cycles per packet.
6. Fanout (RSS on a real NIC): l2fwd on 1 DUT socket vs 2 in a
   PACKET_FANOUT_HASH group (``Lab("veth", workers=N)``): frames back at the
   generator / s, each worker's CPU%, as a ratio. And the flow hash: the
   kernel's comes with each frame (tp_rxhash), computed in the softirq that
   delivers it, so it costs the data plane nothing and is not measured apart
   (its kernel cost is inside the veth numbers); what computing Toeplitz in
   software would cost per frame is ``labkit.bench.cores.measure_toeplitz``.
   veth does the receiver's kernel work on the *sender's* core, so with a
   generator and two workers on a 2-CPU machine, fanout may buy nothing:
   the cores it would spread over are already busy.
7. Latency (``labkit.bench.latency``): p50 and p99 latency and the DUT's
   CPU share for busy, waiting and adaptive polling on block and per-frame
   RX rings, at 10 kpps, 100 kpps and saturation; and what stamping costs.
8. NAPI (``labkit.bench.napi``): the kernel's receive path into the DUT's
   veth (backlog, NAPI, threaded NAPI): latency, and CPU in the DUT, in
   softirqs and in the NAPI thread; whether SO_BUSY_POLL can act on an
   AF_PACKET socket; and whether a DUT offered more than it can take falls
   into receive livelock.
9. Paths (``labkit.bench.paths``): the same frames through the kernel's IP
   forwarding, a Linux bridge, labkit with recv()/send(), labkit on its
   AF_PACKET rings and labkit's graphs as XDP programs in the kernel
   (AF_XDP: not built yet): Mpps, CPU share, CPU cycles per frame.
10. targets: met or not met, with the ratios.

Frames in sections 1-4 are 60 bytes (a 64-byte Ethernet frame less its FCS,
which veth never carries): Ethernet 02:00:00:00:00:02 -> 02:00:00:00:00:01,
IPv4/UDP with valid checksums, labkit's own templates
(``labkit.nic.traffic.make_traffic``), also written as trafgen's
configuration. Section 5 uses the Lab's ``size`` (stored bytes) as given.

As in ``labkit bench``: configurations interleaved round by round (so a noisy
neighbour hurts all alike), every number the median of ``--runs`` rounds, a
progress line on stderr, ``--json`` for everything. On a shared machine every
measurement also records the CPU the rest of the machine used meanwhile
(printed under each table), and ``--quiet-wait S`` waits up to S seconds
before each measurement for the others to calm down. ``netsniff-ng`` and
``trafgen`` missing: one line says how to install them, the labkit-only parts
run, the comparisons say "not measured". ``--only fanout,copy`` runs only
those sections.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import numpy as np
from numba import njit

from ..memory.intrinsics import rdtsc
from ..nic import generator as gen
from ..nic import labnet
from ..nic.afpacket import RxRing, TxRing, read_stats, rx_burst, rx_release
from ..nic.traffic import make_traffic
from ..run.knobs import Knobs
from ..run.lab import Lab
from ..run.measure import now_tsc, tsc_hz
from ..run.noise import BUSY_PERCENT, others_cpu_percent, wait_quiet
from ..run.noise import proc_times as _proc_times
from ..settings import SLICE_S
from . import latency as lat_bench
from . import napi as napi_bench
from . import paths as paths_bench
from .paths import BenchError, sh as _sh
from .cores import measure_toeplitz
from .report import Progress, emit, print_table

PREFIX = "labkit-bench"           # the lab network of this benchmark (never a user's or a test's)
FRAME = 60                        # bytes of a 64-byte Ethernet frame without its FCS
FLOWS = 1024                      # the Lab's default: the same frames for every generator
GEN_BATCH = 64                    # the Lab's default gen_batch (labkit.run.netrun.GEN_BATCH)
GEN_BATCHES = (1, 8, 32, 64, 256)
QUICK_GEN_BATCHES = (1, 64, 256)
COPY_SIZES = (64, 256, 512, 1024, 1500)
QUICK_COPY_SIZES = (64, 1500)
FIXED_RATE = 100_000              # pps, the polling section's fixed rate
FANOUT_WORKERS = (1, 2)           # DUT sockets in the fanout section
SECTIONS = ("rx", "tx", "forwarding", "polling", "copy", "fanout", "latency", "napi", "paths")
SECONDS, QUICK_SECONDS = 1.0, 0.3
RX_RING = (1 << 16, 32)           # block size, block count: labkit.nic.afpacket.RxRing's default
TARGETS = {
    "rx_vs_netsniff": 0.95,       # labkit RX / netsniff-ng, at least
    "tx_vs_trafgen": 0.95,        # labkit TX (gen_batch 64) / trafgen, at least
    "fwd_vs_bridge": 1.0,         # labkit l2fwd / Linux bridge, at least
    "xdp_vs_rings": 2.0,          # XDP l2fwd / labkit l2fwd on AF_PACKET rings, at least (issue 13)
}
INSTALL = "apt-get install netsniff-ng"
QUIET_S = 0.1                     # a receiver is drained when nothing came for this long
QUIET_OTHERS = BUSY_PERCENT      # --quiet-wait: "quiet" is the rest using < this % of a CPU
BRIDGE = "lk-br0"
BRIDGE_MACS = {labnet.DUT_RX: "02:00:00:00:01:00", labnet.DUT_TX: "02:00:00:00:01:01",
               BRIDGE: "02:00:00:00:01:ff"}
DUT_MAC = "02:00:00:00:00:01"
BR_NF = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


def _med(xs):
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def _ratio(a, b):
    return a / b if a is not None and b else None


# ---- the frames ------------------------------------------------------------------

def traffic(size=FRAME, max_frame=1514):
    """The Lab's default traffic at ``size``: what every generator here sends."""
    return make_traffic(size=size, flows=FLOWS, seed=1, max_frame=max_frame)


def trafgen_config(t, n=None):
    """trafgen's configuration for traffic ``t``: one ``{ ... }`` packet per frame,
    in the send order (trafgen sends its packets round robin)."""
    n = t.seq.size if n is None else n
    lines = ["# labkit.bench.net: labkit.nic.traffic frames, in labkit's send order"]
    for i in range(n):
        f = t.frame(int(t.seq[i % t.seq.size]))
        lines.append("{ " + ", ".join(f"0x{b:02x}" for b in f) + " }")
    return "\n".join(lines) + "\n"


def parse_trafgen_config(text):
    """The frames (bytes) of a configuration written by trafgen_config."""
    return [bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})", m))
            for m in re.findall(r"\{([^}]*)\}", text)]


# ---- running the C tools -----------------------------------------------------------

def tools():
    """{"trafgen": path or None, "netsniff-ng": path or None}."""
    return {name: shutil.which(name) for name in ("trafgen", "netsniff-ng")}


class _Child:
    """A C tool running in a namespace: its output read line by line on a thread."""

    def __init__(self, ns, argv, ready="Running!"):
        # stdbuf: the tools print with stdio, which a pipe would buffer until exit.
        cmd = ["ip", "netns", "exec", ns] + (["stdbuf", "-oL"] if shutil.which("stdbuf") else []) + argv
        self.argv = argv
        self.lines = []
        self.ready = threading.Event()
        # A session of its own: a Ctrl-C on the terminal reaches this process,
        # which then stops the child in order (see stop()).
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace", start_new_session=True)
        self.reader = threading.Thread(target=self._read, args=(ready,), daemon=True)
        self.reader.start()

    def _read(self, ready):
        for line in self.p.stdout:
            for part in line.split("\r"):
                if part.strip():
                    self.lines.append(part.strip())
            if ready in line:
                self.ready.set()
        self.ready.set()                    # (it exited: nobody waits for ever)

    def wait_ready(self, timeout=20.0):
        if not self.ready.wait(timeout) or self.p.poll() is not None:
            self.stop()
            raise BenchError(f"{self.argv[0]} did not start: " + " | ".join(self.lines[-3:]))

    def stop(self, timeout=10.0):
        """SIGINT (the tools print their statistics on it), SIGKILL if that is ignored."""
        # To the whole process group: trafgen sends from a forked child per CPU.
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGINT)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
            except ProcessLookupError:
                self.p.wait()
        self.reader.join(5.0)
        return self.p.returncode

    def text(self):
        return "\n".join(self.lines)


def parse_trafgen(text):
    """trafgen's exit statistics: {"packets", "seconds", "cpu"}."""
    m = re.findall(r"(\d+) sec,\s*(\d+) usec on CPU(\d+) \((\d+) packets\)", text)
    if not m:
        raise BenchError("trafgen printed no statistics: " + text[-200:].replace("\n", " | "))
    seconds = max(int(s) + int(u) / 1e6 for s, u, _, _ in m)
    return {"packets": sum(int(p) for *_, p in m), "seconds": seconds, "cpu": int(m[0][2])}


def parse_netsniff(text):
    """netsniff-ng's exit statistics: {"received", "dropped", "unread"}. With a
    TPACKET_V3 ring "incoming" counts the frames it walked, "unread" those the
    kernel delivered that it had not reached, "failed filter" the ring's drops."""
    inc = re.search(r"(\d+)\s+packets incoming(?: \((\d+) unread on exit\))?", text)
    failed = re.search(r"(\d+)\s+packets failed filter", text)
    if not inc:
        raise BenchError("netsniff-ng printed no statistics: " + text[-200:].replace("\n", " | "))
    return {"received": int(inc.group(1)), "dropped": int(failed.group(1)) if failed else 0,
            "unread": int(inc.group(2) or 0)}


def _trafgen(ns, conf):
    return _Child(ns, ["trafgen", "--dev", labnet.GEN_TX, "--conf", conf, "--cpus", "1",
                       "--no-sock-mem", "--notouch-irq"])


def _run_trafgen(ns, conf, seconds):
    """trafgen as fast as it goes for ``seconds``; its exit statistics."""
    tg = _trafgen(ns, conf)
    try:
        tg.wait_ready()
        time.sleep(seconds)
    finally:
        tg.stop()
    return parse_trafgen(tg.text())


# ---- labkit's side: an RX loop that counts, the generator on its own ---------------

@njit(nogil=True, cache=True)
def rx_count_slice(u8, u32, cur, hs, ls, hashes, max_frame, too_long, cnt, slice_end):
    """Take frames from an RX ring and only count them (cnt[0] frames, cnt[1]
    bytes, cnt[2] the TSC of the last one), busy-polling until slice_end."""
    while True:
        n = rx_burst(u8, u32, cur, hs, ls, hashes, hs.size, max_frame, too_long)
        now = np.int64(rdtsc())
        if n > 0:
            cnt[0] += n
            for i in range(n):
                cnt[1] += ls[i]
            cnt[2] = now
            rx_release(u32, cur)
        if now >= slice_end:
            return


class _Counter:
    """labkit's RX ring on one port, walked by rx_count_slice on a thread."""

    def __init__(self, ns, ifname, burst=256):
        self.hz = tsc_hz()
        self.ring = RxRing(ns, ifname, block_size=RX_RING[0], block_nr=RX_RING[1])
        self.hs, self.ls, self.hashes = (np.zeros(burst, np.uint32) for _ in range(3))
        self.too_long = np.zeros(1, np.int64)
        self.cnt = np.zeros(4, np.int64)
        self.stop_ev = threading.Event()
        self.thread = None
        self.cpu = None
        self._slice(0)                       # compile (or load the cache) before the clock

    def _slice(self, end):
        r = self.ring
        rx_count_slice(r.u8, r.u32, r.cur, self.hs, self.ls, self.hashes, r.max_frame, self.too_long,
                       self.cnt, end)

    def start(self, cpu=None):
        self.ring.stats()                    # zero the kernel's counters
        self.cnt[:] = 0

        def main():
            if cpu is not None:
                os.sched_setaffinity(threading.get_native_id(), {cpu})
            c0, w0 = time.thread_time(), time.perf_counter()
            while not self.stop_ev.is_set():
                self._slice(now_tsc() + int(SLICE_S * self.hz))
            self.cpu = 100.0 * (time.thread_time() - c0) / max(time.perf_counter() - w0, 1e-9)
        self.thread = threading.Thread(target=main, name="labkit-rx-count", daemon=True)
        self.thread.start()

    def drain(self, expected, timeout=2.0):
        """Wait until ``expected`` frames are accounted for (received, dropped by
        the ring, too long) or nothing came for QUIET_S."""
        t_end = time.monotonic() + timeout
        last, last_t = -1, time.monotonic()
        dropped = 0
        while time.monotonic() < t_end:
            dropped += self.ring.stats()[1]
            got = int(self.cnt[0]) + dropped + int(self.too_long[0])
            if got >= expected:
                break
            if got != last:
                last, last_t = got, time.monotonic()
            elif time.monotonic() - last_t > QUIET_S:
                break
            time.sleep(0.01)
        return dropped

    def stop(self):
        self.stop_ev.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def close(self):
        self.stop()
        self.ring.close()


class _Gen:
    """labkit's generator on its own (no DUT): the Lab's TX ring on lk-g0, RX ring
    on lk-g1 and compiled loop (``labkit.nic.generator.gen_slice``), on a thread."""

    def __init__(self, p, t, batch=GEN_BATCH, qdisc_bypass=True):
        self.gen, self.hz, self.t, self.batch = gen, tsc_hz(), t, batch
        gns = labnet.gen_ns(p)
        self.tx = TxRing(gns, labnet.GEN_TX, qdisc_bypass=qdisc_bypass)
        try:
            self.rx = RxRing(gns, labnet.GEN_RX)
        except BaseException:
            self.tx.close()
            raise
        self.frames = t.frames.reshape(-1)
        self.gh, self.gl, self.ghash = (np.zeros(256, np.uint32) for _ in range(3))
        self.too_long = np.zeros(1, np.int64)
        self.cap_data, self.cap_len = np.zeros(0, np.uint8), np.zeros(0, np.uint32)
        self.gst = np.zeros(gen.GST_SIZE, np.int64)
        self.gst[gen.G_STOP] = 1
        self._slice(0, 0, 0)                 # compile (or load the cache) before the clock

    def _slice(self, t_start, stop_tsc, slice_end, budget=np.iinfo(np.int64).max, rate_cpp=0.0):
        tx, rx, t = self.tx, self.rx, self.t
        return self.gen.gen_slice(tx.u8, tx.u32, tx.cur, tx.fileno(), tx.kick_buf, self.frames, t.stride,
                                  t.lengths, t.seq, tx.max_frame, rx.u8, rx.u32, rx.cur, self.gh, self.gl,
                                  self.ghash, rx.max_frame, self.too_long, self.cap_data, self.cap_len,
                                  self.gst, budget, t_start, stop_tsc, rate_cpp, self.batch, slice_end,
                                  *self.gen.NO_STAMPS)

    def run(self, seconds, cpu=None, wait_rx=False):
        """Send as fast as the kernel takes it for ``seconds``; if ``wait_rx``,
        go on receiving until nothing came back for QUIET_S. Returns counts, the
        seconds the sender ran, and those until the last frame came back."""
        g, gst, hz = self.gen, self.gst, self.hz
        gst[:] = 0
        self.too_long[0] = 0
        read_stats(self.rx.sock)
        quit_ev, errors, cpu_use, clock = threading.Event(), [], {}, {}

        def main():
            try:
                if cpu is not None:
                    os.sched_setaffinity(threading.get_native_id(), {cpu})
                c0, w0 = time.thread_time(), time.perf_counter()
                # the clock starts on the sending thread, where it is going to run
                start = clock["start"] = now_tsc()
                stop_tsc = start + int(seconds * hz)
                done = False
                while not quit_ev.is_set():
                    now = now_tsc()
                    done = self._slice(start, stop_tsc, now + int(SLICE_S * hz)) or done
                    if gst[g.G_ERR]:
                        break
                    if done and (not wait_rx or now_tsc() - max(gst[g.G_LAST_RX_TSC], gst[g.G_TX_DONE_TSC])
                                 > QUIET_S * hz):
                        break
                cpu_use["gen"] = 100.0 * (time.thread_time() - c0) / max(time.perf_counter() - w0, 1e-9)
            except BaseException as e:
                errors.append(e)

        th = threading.Thread(target=main, name="labkit-gen", daemon=True)
        th.start()
        try:
            while th.is_alive():
                th.join(0.05)
        finally:
            gst[g.G_STOP] = 1                # (Ctrl-C: stop offering, let the TX ring drain)
            th.join(5.0)
            quit_ev.set()
            th.join()
        if errors:
            raise errors[0]
        if gst[g.G_ERR]:
            raise BenchError(f"the generator's port failed: {os.strerror(int(gst[g.G_ERR]))}")
        start = clock["start"]
        tx_s = max(int(gst[g.G_TX_DONE_TSC]) - start, 1) / hz
        end = max(int(gst[g.G_TX_DONE_TSC]), int(gst[g.G_LAST_RX_TSC]))
        return {"sent": int(gst[g.G_SENT]), "received": int(gst[g.G_RX]), "tx_seconds": tx_s,
                "seconds": max(end - start, 1) / hz, "rx_ring_full": read_stats(self.rx.sock)[1],
                "cpu_percent": cpu_use.get("gen")}

    def close(self):
        self.tx.close()
        self.rx.close()


# ---- the kernel's bridge --------------------------------------------------------------

def _br_nf(ns, values=None):
    """br_netfilter's per-namespace switches in ``ns`` (read, or set to ``values``)."""
    path = {f"bridge/{name}": name for name in BR_NF}
    got = labnet.net_sysctls(ns, path, values and {f"bridge/{name}": v for name, v in values.items()})
    return {path[k]: v for k, v in got.items()}


def bridge_up(p):
    """A Linux bridge in the DUT's namespace forwarding lk-d0 -> lk-d1; returns what
    bridge_down needs to put back. On failure, what was done is undone."""
    dns = labnet.dut_ns(p)
    saved = {"br_nf": _br_nf(dns)}
    try:
        for ifname in (labnet.DUT_RX, labnet.DUT_TX):
            # tc ingress runs before the bridge's rx_handler: the drop must go.
            _sh("tc", "-n", dns, "qdisc", "del", "dev", ifname, "clsact")
            # A bridge keeps its ports' MACs as local addresses: frames to them
            # go up its own stack, not across. Give the ports MACs of their own.
            _sh("ip", "-n", dns, "link", "set", "dev", ifname, "address", BRIDGE_MACS[ifname])
        _sh("ip", "-n", dns, "link", "add", BRIDGE, "address", BRIDGE_MACS[BRIDGE], "type", "bridge",
            "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0")
        _br_nf(dns, {name: 0 for name in BR_NF})
        for ifname in (labnet.DUT_RX, labnet.DUT_TX):
            _sh("ip", "-n", dns, "link", "set", "dev", ifname, "master", BRIDGE)
        _sh("ip", "-n", dns, "link", "set", "dev", BRIDGE, "arp", "off", "multicast", "off", "up")
        # The DUT's MAC lives behind lk-d1: known unicast, forwarded, not flooded.
        _sh("bridge", "-n", dns, "fdb", "replace", DUT_MAC, "dev", labnet.DUT_TX, "master", "static")
    except BaseException:
        bridge_down(p, saved)
        raise
    return saved


def bridge_down(p, saved=None):
    """Remove the bridge, put the ingress drops, MACs and br_netfilter switches back."""
    dns = labnet.dut_ns(p)
    if os.path.exists(os.path.join(labnet.NETNS_DIR, dns)):
        subprocess.run(["ip", "-n", dns, "link", "del", BRIDGE], capture_output=True)
        if saved and saved.get("br_nf"):
            _br_nf(dns, saved["br_nf"])
    labnet.up(tap=False, p=p)                # MACs, flags, clsact and the drop filter, idempotently
    if not labnet.is_up(p):
        raise BenchError("the lab network did not come back after the bridge run")


@contextmanager
def kernel_bridge(p):
    saved = bridge_up(p)
    try:
        yield
    finally:
        bridge_down(p, saved)


# ---- the measurements, one configuration each ----------------------------------------------

class Ctx:
    """What every measurement needs: the prefix, the seconds, the tools, the files."""

    def __init__(self, p, seconds, tmp, have):
        self.p, self.seconds, self.tmp, self.have = p, seconds, tmp, have
        self.gns, self.dns = labnet.gen_ns(p), labnet.dut_ns(p)
        self.t = traffic(FRAME)
        self.conf = os.path.join(tmp, "frames.cfg")
        with open(self.conf, "w") as f:
            f.write(trafgen_config(self.t))
        # trafgen --cpus 1 sends from CPU 0 (it pins its one sender there): labkit's
        # sender goes there too, and the receivers in section 1 on another CPU.
        cpus = sorted(os.sched_getaffinity(0))
        self.send_cpu = 0 if 0 in cpus else cpus[0]
        self.recv_cpu = next((x for x in cpus if x != self.send_cpu), None)

    def rx_delta(self, ifname, ns=None):
        ns = ns or self.dns
        s0 = labnet.link_stats(ns, ifname)
        return lambda: {k: v - s0[k] for k, v in labnet.link_stats(ns, ifname).items()}


def m_rx_labkit(c):
    cnt = _Counter(c.dns, labnet.DUT_RX)
    try:
        d = c.rx_delta(labnet.DUT_RX)
        cnt.start(c.recv_cpu)
        tg = _run_trafgen(c.gns, c.conf, c.seconds)
        arrived = d()["rx_packets"]
        dropped = cnt.drain(arrived)
    finally:
        cnt.close()
    got = int(cnt.cnt[0])
    return {"pps": got / tg["seconds"], "received": got, "ring_full": dropped, "sent": tg["packets"],
            "arrived": arrived, "seconds": tg["seconds"], "cpu_percent": cnt.cpu}


def m_rx_netsniff(c):
    argv = ["netsniff-ng", "--in", labnet.DUT_RX, "--silent", "--no-sock-mem", "--notouch-irq",
            "--ring-size", f"{RX_RING[0] * RX_RING[1] // 1024}KiB"]
    if c.recv_cpu is not None:
        argv += ["--bind-cpu", str(c.recv_cpu)]
    ns = _Child(c.dns, argv)
    try:
        ns.wait_ready()
        d = c.rx_delta(labnet.DUT_RX)
        tg = _run_trafgen(c.gns, c.conf, c.seconds)
        arrived = d()["rx_packets"]
        time.sleep(0.3)                      # its blocks retire on a timeout: let the last one come
    finally:
        ns.stop()
    st = parse_netsniff(ns.text())
    return {"pps": st["received"] / tg["seconds"], "received": st["received"], "ring_full": st["dropped"],
            "unread": st["unread"], "sent": tg["packets"], "arrived": arrived, "seconds": tg["seconds"]}


def m_tx_trafgen(c):
    d = c.rx_delta(labnet.DUT_RX)
    g = c.rx_delta(labnet.GEN_TX, c.gns)
    tg = _run_trafgen(c.gns, c.conf, c.seconds)
    got, lost = d()["rx_packets"], g()["tx_dropped"]
    return {"pps": got / tg["seconds"], "delivered": got, "sent": tg["packets"], "link_dropped": lost,
            "seconds": tg["seconds"], "cpu": tg["cpu"]}


def m_tx_labkit(c, batch):
    gen = _Gen(c.p, c.t, batch=batch)
    try:
        d = c.rx_delta(labnet.DUT_RX)
        g = c.rx_delta(labnet.GEN_TX, c.gns)
        cpu = c.send_cpu
        r = gen.run(c.seconds, cpu=cpu)
        got, lost = d()["rx_packets"], g()["tx_dropped"]
    finally:
        gen.close()
    return {"pps": got / r["tx_seconds"], "delivered": got, "sent": r["sent"], "link_dropped": lost,
            "seconds": r["tx_seconds"], "cpu": cpu, "cpu_percent": r["cpu_percent"]}


def _lab(size=FRAME, rate=None, **knobs):
    return Lab(backend="veth", graph="l2fwd", knobs=Knobs(**knobs), size=size, rate=rate)


def _lab_result(r):
    return {"pps": r.pps, "forwarded_pps": r.forwarded / r.seconds if r.seconds > 0 else 0.0,
            "sent": r.sent, "forwarded": r.forwarded, "dropped": dict(r.dropped), "seconds": r.seconds,
            "cycles_per_packet": r.cycles_per_packet, "cpu_percent": r.cpu_percent,
            "gen_tx_pps": r.extra.get("gen_tx_pps"), "gen_cpu_percent": r.extra.get("gen_cpu_percent"),
            "conserved": r.conserved}


def m_lab(c, size=FRAME, rate=None, **knobs):
    with _lab(size=size, rate=rate, **knobs) as lab:
        return _lab_result(lab.run(seconds=c.seconds))


def m_fwd_labkit(c):
    res = m_lab(c)
    res["pps"] = res["forwarded_pps"]        # frames back at the generator / seconds
    return res


def m_fanout(c, workers):
    """l2fwd on `workers` DUT sockets (one PACKET_FANOUT_HASH group when > 1)."""
    with Lab(backend="veth", graph="l2fwd", size=FRAME, workers=workers) as lab:
        r = lab.run(seconds=c.seconds)
    res = _lab_result(r)
    res["pps"] = res["forwarded_pps"]        # frames back at the generator / s
    rows = r.extra.get("workers")
    res["worker_cpu_percent"] = [w["cpu_percent"] for w in rows] if rows else [r.cpu_percent]
    res["worker_sent"] = [w["sent"] for w in rows] if rows else [r.sent]
    return res


def m_toeplitz(c):
    """TSC cycles per frame of the software Toeplitz hash (the in-memory NIC's RSS)."""
    return {"cycles_per_frame": measure_toeplitz(reps=500 if c.seconds < SECONDS else 2000)}


def m_fwd_bridge(c):
    """The generator alone through the Linux bridge (the forwarding section)."""
    return m_fwd_kernel(c, "bridge")


def m_fwd_kernel(c, setup):
    """The generator alone through the kernel's router or bridge (the paths and forwarding sections):
    rate, and the kernel's CPU meanwhile."""
    gen = _Gen(c.p, c.t, batch=GEN_BATCH)
    try:
        with (paths_bench.kernel_router(c.p) if setup == "router" else kernel_bridge(c.p)):
            k0, w0 = paths_bench.kernel_cpu(), time.perf_counter()
            r = gen.run(c.seconds, wait_rx=True)
            k1, w1 = paths_bench.kernel_cpu(), time.perf_counter()
    finally:
        gen.close()
    return paths_bench.row(r["received"] / r["seconds"], r["received"], r["seconds"], 0.0, k1 - k0, w1 - w0,
                           sent=r["sent"], lost=r["sent"] - r["received"], gen_cpu_percent=r["cpu_percent"])


# ---- the neighbours ------------------------------------------------------------------------
#
# The machine may be shared: another process busy on a CPU takes it from the
# generator, the DUT or the kernel's softirq work, and a two-thread Lab feels
# that more than a one-thread sender. Every measurement records how much CPU
# the rest of the machine used meanwhile (processes that are neither this one,
# its children, nor kernel threads), so a bad round can be recognised.

# (labkit.run.noise: others_cpu_percent, wait_quiet, shared with the demo)


# ---- the benchmark ------------------------------------------------------------------------

def configurations(quick, have_trafgen, have_netsniff):
    """[(section, name, function(ctx) -> dict)] in the order of one round."""
    out = []
    if have_trafgen:
        out.append(("rx", "labkit", m_rx_labkit))
        if have_netsniff:
            out.append(("rx", "netsniff-ng", m_rx_netsniff))
        out.append(("tx", "trafgen", m_tx_trafgen))
    for b in (QUICK_GEN_BATCHES if quick else GEN_BATCHES):
        out.append(("tx", f"labkit batch {b}", lambda c, b=b: m_tx_labkit(c, b)))
    out.append(("forwarding", "labkit", m_fwd_labkit))
    out.append(("forwarding", "bridge", m_fwd_bridge))
    for poll in ("busy", "wait"):
        out.append(("polling", f"{poll} full", lambda c, poll=poll: m_lab(c, poll=poll)))
        out.append(("polling", f"{poll} {FIXED_RATE // 1000}k",
                    lambda c, poll=poll: m_lab(c, rate=FIXED_RATE, poll=poll)))
    for size in (QUICK_COPY_SIZES if quick else COPY_SIZES):
        for copy in (False, True):
            out.append(("copy", f"{size} {'copy' if copy else 'zero-copy'}",
                        lambda c, size=size, copy=copy: m_lab(c, size=size, copy=copy)))
    for n in FANOUT_WORKERS:
        out.append(("fanout", _fanout_name(n), lambda c, n=n: m_fanout(c, n)))
    out.append(("fanout", "software Toeplitz", m_toeplitz))
    out += lat_bench.configurations(quick)
    out += napi_bench.configurations(quick)
    out += paths_bench.configurations(quick, m_fwd_kernel)
    return out


def _fanout_name(n):
    return f"{n} worker" + ("s" if n > 1 else "")


def _summ(rs, keys=("pps", "cpu_percent", "cycles_per_packet")):
    keys = tuple(keys) + ("others_cpu_percent",)
    out = {k: _med([r.get(k) for r in rs]) for k in keys if any(r.get(k) is not None for r in rs)}
    out["runs"] = rs
    return out


def _not_measured(why):
    return {"not_measured": why}


def summarize(raw, quick, have, sections=SECTIONS):
    """Medians and ratios per section (of ``sections``) from raw {(section, name): [results]}."""
    def s(section, name, keys=("pps", "cpu_percent", "cycles_per_packet")):
        rs = raw.get((section, name))
        return _summ(rs, keys) if rs else None

    why_tg = f"trafgen not installed ({INSTALL})"
    why_ns = f"netsniff-ng not installed ({INSTALL})"
    res = {}
    if "rx" in sections:
        lk = s("rx", "labkit", ("pps", "cpu_percent"))
        ns = s("rx", "netsniff-ng", ("pps",))
        res["rx"] = {"labkit": lk or _not_measured(why_tg),
                     "netsniff-ng": ns or _not_measured(why_tg if not have["trafgen"] else why_ns),
                     "ratio": _ratio(lk and lk["pps"], ns and ns["pps"])}
    if "tx" in sections:
        tg = s("tx", "trafgen", ("pps",))
        batches = QUICK_GEN_BATCHES if quick else GEN_BATCHES
        lab_tx = {b: s("tx", f"labkit batch {b}", ("pps", "cpu_percent")) for b in batches}
        res["tx"] = {"trafgen": tg or _not_measured(why_tg), "labkit": lab_tx,
                     "ratio": _ratio(lab_tx[GEN_BATCH]["pps"], tg and tg["pps"]),
                     "ratios": {b: _ratio(v["pps"], tg and tg["pps"]) for b, v in lab_tx.items()}}
    if "forwarding" in sections:
        fl, fb = s("forwarding", "labkit"), s("forwarding", "bridge", ("pps", "gen_cpu_percent"))
        res["forwarding"] = {"labkit": fl, "bridge": fb, "ratio": _ratio(fl["pps"], fb["pps"])}
    if "polling" in sections:
        res["polling"] = {poll: {"full": s("polling", f"{poll} full"),
                                 f"{FIXED_RATE // 1000}k": s("polling", f"{poll} {FIXED_RATE // 1000}k")}
                          for poll in ("busy", "wait")}
    if "copy" in sections:
        cp = {}
        for size in (QUICK_COPY_SIZES if quick else COPY_SIZES):
            z, c = s("copy", f"{size} zero-copy"), s("copy", f"{size} copy")
            cp[size] = {"zero_copy": z, "copy": c, "speedup": _ratio(z["pps"], c["pps"])}
        res["copy"] = cp
    if "fanout" in sections:
        res["fanout"] = _fanout_summary(s)
    if "latency" in sections:
        res["latency"] = lat_bench.summarize(s, quick, _ratio)
    if "napi" in sections:
        res["napi"] = napi_bench.summarize(s, quick, _ratio)
    if "paths" in sections:
        res["paths"] = paths_bench.summarize(s, quick, _ratio)
    res["targets"] = _targets(res)
    return res


def _fanout_summary(s):
    """1 vs 2 DUT sockets, each worker's CPU%, and the flow hash's cost."""
    out = {}
    for n in FANOUT_WORKERS:
        d = s("fanout", _fanout_name(n), ("pps", "cpu_percent", "cycles_per_packet", "gen_cpu_percent"))
        d["worker_cpu_percent"] = [_med([r["worker_cpu_percent"][i] for r in d["runs"]]) for i in range(n)]
        d["worker_share"] = [_med([r["worker_sent"][i] / max(sum(r["worker_sent"]), 1) for r in d["runs"]])
                             for i in range(n)]
        out[f"workers_{n}"] = d
    one, many = out[f"workers_{FANOUT_WORKERS[0]}"], out[f"workers_{FANOUT_WORKERS[-1]}"]
    out["ratio"] = _ratio(many["pps"], one["pps"])
    tz = s("fanout", "software Toeplitz", ("cycles_per_frame",))
    out["hash"] = {
        "kernel": "tp_rxhash: computed by the kernel while it delivers the frame (on veth, on the "
                  "sender's core), read from the frame's header: no data-plane cycles to measure",
        "software_toeplitz_cycles_per_frame": tz["cycles_per_frame"],
        # what the software hash would add to one worker's veth packet
        "software_toeplitz_share": _ratio(tz["cycles_per_frame"], one.get("cycles_per_packet")),
        "runs": tz["runs"]}
    return out


def _targets(res):
    rows = []

    def row(name, value, limit, note=None, kind="at least"):
        unit = "%" if "%" in name else "x"
        r = {"target": name, "value": value, "limit": f"{'>=' if kind == 'at least' else '<='} {limit:g}{unit}",
             "unit": unit,
             "met": None if value is None else bool(value >= limit if kind == "at least" else value <= limit)}
        if value is None and note:
            r["note"] = note
        rows.append(r)

    if "rx" in res:
        rx = res["rx"]
        row("RX: labkit ring / netsniff-ng", rx["ratio"], TARGETS["rx_vs_netsniff"],
            rx["netsniff-ng"].get("not_measured"))
    if "tx" in res:
        tx = res["tx"]
        row(f"TX: labkit gen_batch {GEN_BATCH} / trafgen", tx["ratio"], TARGETS["tx_vs_trafgen"],
            tx["trafgen"].get("not_measured"))
    if "forwarding" in res:
        row("forwarding: labkit l2fwd / Linux bridge", res["forwarding"]["ratio"], TARGETS["fwd_vs_bridge"])
    if "latency" in res:
        lat_bench.target_rows(res["latency"], lambda name, v, limit, kind: row(name, v, limit, kind=kind))
    if "paths" in res:
        xdp_rows = res["paths"]["paths"]
        row("paths: XDP l2fwd / labkit l2fwd on AF_PACKET rings", res["paths"]["xdp_vs_rings_l2fwd"],
            TARGETS["xdp_vs_rings"], xdp_rows.get("XDP l2fwd", {}).get("not_measured"))
    return rows


def run(quick=False, runs=None, seconds=None, progress=None, p=PREFIX, sections=None, quiet_wait=0.0):
    """Every section; returns the result dict (what --json prints). ``sections``
    (some of SECTIONS) limits what is run and reported. ``quiet_wait``: before each
    measurement, wait up to this many seconds for the rest of the machine to
    go quiet (see wait_quiet)."""
    runs = runs if runs is not None else (3 if quick else 5)
    seconds = seconds if seconds is not None else (QUICK_SECONDS if quick else SECONDS)
    progress = progress or (lambda s: None)
    sections = tuple(SECTIONS if sections is None else sections)
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown or not sections:
        raise BenchError(f"sections {','.join(unknown) or '(none)'}: use some of {','.join(SECTIONS)}")
    reason = labnet.why_not()
    if reason:
        raise BenchError(reason)
    have = {k: v is not None for k, v in tools().items()}
    t0 = time.monotonic()
    hz = tsc_hz()
    old_prefix = os.environ.get("LABKIT_NET_PREFIX")
    os.environ["LABKIT_NET_PREFIX"] = p      # the Lab and labnet use this prefix's network
    tmp = tempfile.mkdtemp(prefix="labkit-netbench-")
    made = False
    try:
        if not labnet.is_up(p):
            progress("building the lab network " + p)
            made = True
            labnet.up(tap=False, p=p)
        c = Ctx(p, seconds, tmp, have)
        confs = configurations(quick, have["trafgen"], have["netsniff-ng"])
        confs = [x for x in confs if x[0] in sections]
        raw = {}
        for r in range(runs):
            for section, name, fn in confs:
                what = f"{section}: round {r + 1}/{runs}, {name}"
                progress(what)
                waited = wait_quiet(quiet_wait, lambda s: progress(f"{what} ({s})")) if quiet_wait else 0.0
                p0, w0 = _proc_times(), time.monotonic()
                m = fn(c)
                m["others_cpu_percent"] = others_cpu_percent(p0, _proc_times(), time.monotonic() - w0)
                m["waited_s"] = waited
                raw.setdefault((section, name), []).append(m)
    finally:
        try:
            if made:
                labnet.down(p)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old_prefix is None:
                os.environ.pop("LABKIT_NET_PREFIX", None)
            else:
                os.environ["LABKIT_NET_PREFIX"] = old_prefix
    res = {"meta": {"runs": runs, "quick": quick, "seconds_per_run": seconds, "tsc_hz": hz, "prefix": p,
                    "quiet_wait": quiet_wait, "quiet_others_percent": QUIET_OTHERS,
                    "frame_bytes": FRAME, "flows": FLOWS, "gen_batch": GEN_BATCH,
                    "rx_ring_bytes": RX_RING[0] * RX_RING[1], "fixed_rate": FIXED_RATE,
                    "cpus": sorted(os.sched_getaffinity(0)), "tools": tools(),
                    "send_cpu": c.send_cpu, "recv_cpu": c.recv_cpu, "targets": TARGETS,
                    "sections": list(sections)}}
    res.update(summarize(raw, quick, have, sections))
    res["meta"]["seconds"] = time.monotonic() - t0
    return res


# ---- printing ---------------------------------------------------------------------------

def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


class _Out:
    """Where the report goes, and how its numbers are written."""

    def __init__(self, out):
        self.out = out

    def print(self, text):
        print(text, file=self.out)

    def table(self, title, cols, rows):
        print_table(title, cols, rows, self.out)

    @staticmethod
    def kpps(d, key="pps"):
        return _f(d.get(key) / 1e3 if d and d.get(key) is not None else None, ".0f")

    @staticmethod
    def ratio(x):
        return _f(x, ".2f") + ("x" if x is not None else "")

    def noise(self, *summaries):
        """What else ran on the machine during these measurements."""
        runs = [r for d in summaries if d and "runs" in d for r in d["runs"]]
        xs = [r["others_cpu_percent"] for r in runs if r.get("others_cpu_percent") is not None]
        waited = sum(r.get("waited_s") or 0.0 for r in runs)
        if xs:
            self.print(f"   other processes meanwhile: median {_med(xs):.0f}%, max {max(xs):.0f}% of a CPU"
                       + (f"; waited {waited:.0f} s for quiet" if waited >= 0.5 else ""))


def _print_meta(o, m):
    o.print(f"labkit bench veth: {m['runs']} runs per number (medians), {m['seconds_per_run']:g} s each, "
            f"{m['frame_bytes']}-byte frames (64 on the wire), TSC {m['tsc_hz'] / 1e9:.3f} GHz, "
            f"CPUs {','.join(map(str, m['cpus']))}, {'quick, ' if m['quick'] else ''}{m['seconds']:.0f} s")
    if m.get("quiet_wait"):
        o.print(f"   waited up to {m['quiet_wait']:g} s before each measurement for other processes to use "
                f"< {m['quiet_others_percent']:g}% of a CPU")
    missing = [k for k, v in m["tools"].items() if v is None]
    if missing:
        o.print(f"   {' and '.join(missing)} not installed ({INSTALL}): comparisons not measured")


def _print_rx(o, res, m):
    rx = res["rx"]
    rows = []
    for name in ("labkit", "netsniff-ng"):
        d = rx[name]
        if "not_measured" in d:
            rows.append([name, "not measured", "-", "-", "-"])
        else:
            med_drop = _med([r["ring_full"] for r in d["runs"]])
            med_arr = _med([r["arrived"] for r in d["runs"]])
            rows.append([name, o.kpps(d), f"{med_drop:.0f}", f"{med_arr:.0f}",
                         _f(d.get("cpu_percent"), ".0f")])
    o.table(f"1. RX on lk-d0, trafgen sending on lk-g0 (labkit / netsniff-ng = {o.ratio(rx['ratio'])})",
            ["receiver", "kpps", "ring full", "frames arrived", "CPU%"], rows)
    o.noise(rx["labkit"], rx["netsniff-ng"])


def _print_tx(o, res, m):
    tx = res["tx"]
    rows = []
    if "not_measured" in tx["trafgen"]:
        rows.append(["trafgen", "not measured", "-", "-"])
    else:
        d = tx["trafgen"]
        rows.append(["trafgen", o.kpps(d), "1.00x", f"{_med([r['link_dropped'] for r in d['runs']]):.0f}"])
    for b, d in tx["labkit"].items():
        rows.append([f"labkit, gen_batch {b}", o.kpps(d), o.ratio(tx["ratios"][b]),
                     f"{_med([r['link_dropped'] for r in d['runs']]):.0f}"])
    o.table("2. TX on lk-g0 as fast as possible (frames lk-d0 received / s), same CPU",
            ["sender", "kpps", "vs trafgen", "lk-g0 tx_dropped"], rows)
    o.noise(tx["trafgen"], *tx["labkit"].values())


def _print_forwarding(o, res, m):
    fw = res["forwarding"]
    fl, fb = fw["labkit"], fw["bridge"]
    o.table(f"3. Forwarding lk-d0 -> lk-d1, labkit's generator (frames back / s) "
            f"(labkit / bridge = {o.ratio(fw['ratio'])})",
            ["forwarder", "kpps", "sent kpps", "DUT CPU%", "generator CPU%"],
            [["labkit l2fwd (ring)", o.kpps(fl), _f(_med([r["gen_tx_pps"] / 1e3 for r in fl["runs"]]), ".0f"),
            _f(fl.get("cpu_percent"), ".0f"), _f(_med([r["gen_cpu_percent"] for r in fl["runs"]]), ".0f")],
           ["Linux bridge", o.kpps(fb), _f(_med([r["sent"] / r["seconds"] / 1e3 for r in fb["runs"]]), ".0f"),
            "(softirq)", _f(fb.get("gen_cpu_percent"), ".0f")]])
    o.noise(fl, fb)


def _print_polling(o, res, m):
    pol = res["polling"]
    rows = []
    for poll in ("busy", "wait"):
        for load, d in pol[poll].items():
            rows.append([poll, load, o.kpps(d), _f(d.get("cpu_percent"), ".0f"),
                         _f(d.get("cycles_per_packet"), ".0f")])
    o.table("4. Polling: busy-poll vs sleep in poll(), l2fwd", ["poll", "offered", "kpps", "DUT CPU%",
                                                             "TSC cyc/pkt"], rows)
    o.noise(*[d for v in pol.values() for d in v.values()])


def _print_copy(o, res, m):
    rows = []
    for size, d in res["copy"].items():
        z, c = d["zero_copy"], d["copy"]
        rows.append([size, o.kpps(z), _f(z.get("cycles_per_packet"), ".0f"), o.kpps(c),
                     _f(c.get("cycles_per_packet"), ".0f"), o.ratio(d["speedup"])])
    o.table("5. Zero-copy (rings) vs copy (recv()/send() per frame), l2fwd, by Lab size",
            ["size", "zero-copy kpps", "cyc/pkt", "copy kpps", "cyc/pkt", "speedup"], rows)
    o.noise(*[x for d in res["copy"].values() for x in (d["zero_copy"], d["copy"])])


def _print_fanout(o, res, m):
    fo = res["fanout"]
    rows = []
    for n in FANOUT_WORKERS:
        d = fo[f"workers_{n}"]
        rows.append([f"{n} socket{'s' if n > 1 else ''}", o.kpps(d),
                     " + ".join(_f(x, ".0f") for x in d["worker_cpu_percent"]),
                     " / ".join(_f(100 * x, ".0f") for x in d["worker_share"]),
                     _f(d.get("gen_cpu_percent"), ".0f"), _f(d.get("cycles_per_packet"), ".0f")])
    o.table(f"6. Fanout: l2fwd on 1 vs {FANOUT_WORKERS[-1]} DUT sockets in a PACKET_FANOUT_HASH group, "
            f"frames back / s ({FANOUT_WORKERS[-1]} / 1 = {o.ratio(fo['ratio'])})",
            ["DUT", "kpps", "worker CPU%", "frames %", "generator CPU%", "TSC cyc/pkt"], rows)
    o.noise(*[fo[f"workers_{n}"] for n in FANOUT_WORKERS])
    h = fo["hash"]
    share = h["software_toeplitz_share"]
    o.print(f"   flow hash: the kernel's comes with each frame (tp_rxhash), no data-plane cycles; software "
            f"Toeplitz costs {_f(h['software_toeplitz_cycles_per_frame'], '.0f')} TSC cycles/frame "
            f"({_f(share and 100 * share, '.2g')}% of a 1-socket packet on veth)")
    o.print(f"   veth does the receiver's kernel work on the sender's core: the generator and "
            f"{FANOUT_WORKERS[-1]} workers share {len(m['cpus'])} CPU(s)")


def _print_latency(o, res, m):
    lat_bench.print_section(o, res, _f)


def _print_napi(o, res, m):
    napi_bench.print_section(o, res, _f)


def _print_paths(o, res, m):
    paths_bench.print_section(o, res, _f)


def _print_targets(o, res, m):
    o.table("10. targets", ["target", "measured", "target", "status"],
            [[t["target"], o.ratio(t["value"]) if t["unit"] == "x" else _f(t["value"], ".0f") + "%", t["limit"],
              "not measured" if t["met"] is None else ("met" if t["met"] else "not met")]
             for t in res["targets"]])


def _print(res, out=sys.stdout):
    o, m = _Out(out), res["meta"]
    _print_meta(o, m)
    for name, section in (("rx", _print_rx), ("tx", _print_tx), ("forwarding", _print_forwarding),
                          ("polling", _print_polling), ("copy", _print_copy), ("fanout", _print_fanout),
                          ("latency", _print_latency), ("napi", _print_napi), ("paths", _print_paths)):
        if name in res:
            section(o, res, m)
    if res["targets"]:
        _print_targets(o, res, m)


def main(argv=None):
    p = argparse.ArgumentParser(prog="labkit bench veth", description=(
        "Measure the AF_PACKET ring driver on veth side by side in one run: RX vs netsniff-ng, TX vs "
        "trafgen, l2fwd vs a Linux bridge, busy-poll vs poll(), zero-copy vs copy, 1 vs 2 DUT sockets "
        "in a fanout group; medians of --runs. "
        "Needs root; builds its own lab network (prefix labkit-bench) and removes it."))
    p.add_argument("--quick", action="store_true", help="3 runs, shorter runs, fewer batch and frame sizes")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help="rounds per number, the median is reported (default 5, quick 3)")
    p.add_argument("--seconds", type=float, default=None, metavar="S",
                   help=f"seconds of traffic per measurement (default {SECONDS:g}, quick {QUICK_SECONDS:g})")
    p.add_argument("--only", default=None, metavar="SECTIONS",
                   help=f"run only these sections, comma-separated: {','.join(SECTIONS)} (default: all)")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                   help="on a shared machine: before each measurement wait up to S seconds until other "
                        f"processes use less than {QUIET_OTHERS:g}%% of a CPU (default 0: do not wait)")
    args = p.parse_args(argv)
    if args.runs is not None and not 1 <= args.runs <= 100:
        p.error(f"--runs {args.runs}: use 1 to 100")
    if args.seconds is not None and not 0.05 <= args.seconds <= 60:
        p.error(f"--seconds {args.seconds}: use 0.05 to 60")
    if not 0 <= args.quiet_wait <= 600:
        p.error(f"--quiet-wait {args.quiet_wait}: use 0 to 600 seconds")
    sections = None
    if args.only is not None:
        sections = tuple(x.strip() for x in args.only.split(",") if x.strip())
        bad = [x for x in sections if x not in SECTIONS]
        if bad or not sections:
            p.error(f"--only {args.only}: use some of {','.join(SECTIONS)}, comma-separated")
    reason = labnet.why_not()
    if reason:
        print(f"labkit bench veth: cannot build the lab network: {reason}", file=sys.stderr)
        return 2
    missing = [k for k, v in tools().items() if v is None]
    if missing:
        print(f"labkit bench veth: {' and '.join(missing)} not found (install: {INSTALL}); "
              "running the labkit-only parts, comparisons not measured", file=sys.stderr)
    prog = Progress()
    # SIGTERM cleans up as Ctrl-C does (bridge, children, namespaces).
    def on_term(signum, frame):
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        res = run(quick=args.quick, runs=args.runs, seconds=args.seconds, progress=prog, p=PREFIX,
                  sections=sections, quiet_wait=args.quiet_wait)
    except KeyboardInterrupt:
        prog.done()
        return 130
    except (BenchError, labnet.NetError, OSError) as e:
        prog.done()
        print(f"labkit bench veth: {e}", file=sys.stderr)
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    prog.done()
    return emit(res, args.json, _print)


if __name__ == "__main__":
    sys.exit(main())
