"""pcap files we write are read by scapy, tcpdump and tshark, and we read theirs."""
import shutil
import struct
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scapy.utils import rdpcap, wrpcap
from scapy.layers.l2 import Ether
from scapy.layers.inet import IP, UDP

from labkit.nic.pcap import PcapError, PcapWriter, load_traffic, read_frames, read_pcap
from labkit.nic.traffic import make_traffic


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in [60, 1514, 0, 13, 590, 9000, 64]]


def _write(path, frames):
    with PcapWriter(path) as w:
        for f in frames:
            w.write(f)
    return path


def test_round_trip(tmp_path, frames):
    p = _write(tmp_path / "a.pcap", frames)
    assert read_frames(p) == frames
    data, offsets, lengths = read_pcap(p)
    assert data.dtype == np.uint8 and offsets.dtype == np.int64 and lengths.dtype == np.uint32
    assert lengths.tolist() == [len(f) for f in frames]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 400))
def test_round_trip_property(tmp_path_factory, frames, snaplen):
    p = tmp_path_factory.mktemp("h") / "h.pcap"
    with PcapWriter(p, snaplen=snaplen) as w:
        w.write_many(np.frombuffer(b"".join(frames) or b"\0", np.uint8),
                     np.cumsum([0] + [len(f) for f in frames])[:-1], [len(f) for f in frames])
    assert read_frames(p) == [f[:snaplen] for f in frames]


def test_write_many_matches_write(tmp_path, frames):
    data = np.frombuffer(b"".join(frames), dtype=np.uint8)
    lengths = np.array([len(f) for f in frames])
    offsets = np.cumsum(lengths) - lengths
    with PcapWriter(tmp_path / "m.pcap") as w:
        w.write_many(data, offsets, lengths)
        w.write_many(data, offsets[::-1], lengths[::-1])
    assert read_frames(tmp_path / "m.pcap") == frames + frames[::-1]


def test_timestamps_increase_and_snaplen(tmp_path):
    with PcapWriter(tmp_path / "s.pcap", snaplen=100) as w:
        w.write(b"\x00" * 200)
        w.write_many(np.zeros(300, np.uint8), [0, 150], [150, 150])
        w.write(np.zeros(60, np.uint8), ts_ns=2_000_000_000_000_000_000)
    pk = rdpcap(str(tmp_path / "s.pcap"))
    assert [len(p) for p in pk] == [100, 100, 100, 60] and pk[0].wirelen == 200
    times = [float(p.time) for p in pk]
    assert times == sorted(times) and len(set(times)) == 4
    with pytest.raises(ValueError, match="past the end"):
        PcapWriter(tmp_path / "x.pcap").write_many(np.zeros(10, np.uint8), [5], [10])


def test_scapy_reads_ours(tmp_path):
    t = make_traffic(flows=50, mix="mixed", size="imix", malformed=0.1)
    with PcapWriter(tmp_path / "t.pcap") as w:
        w.write_traffic(t)
    pk = rdpcap(str(tmp_path / "t.pcap"))
    assert len(pk) == len(t.seq)
    assert [bytes(p) for p in pk[:200]] == [t.frame(i) for i in t.seq[:200]]


@pytest.mark.parametrize("nano", [False, True])
def test_we_read_scapys(tmp_path, nano):
    pk = [Ether() / IP(dst=f"198.18.0.{i}") / UDP() / (b"x" * i) for i in range(20)]
    for i, p in enumerate(pk):
        p.time = 1_700_000_000 + i / 7
    wrpcap(str(tmp_path / "s.pcap"), pk, nano=nano)
    assert read_frames(tmp_path / "s.pcap") == [bytes(p) for p in pk]


def test_big_endian_file(tmp_path, frames):
    """Write the same records in big-endian order by hand: both magics must read."""
    out = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        out += struct.pack(">IIII", 1, i, len(f), len(f)) + f
    (tmp_path / "be.pcap").write_bytes(out)
    assert read_frames(tmp_path / "be.pcap") == frames


@pytest.mark.parametrize("tool, args", [("tcpdump", ["-nn", "-r"]), ("tshark", ["-n", "-r"])])
def test_tools_read_ours(tmp_path, tool, args):
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} not installed (apt-get install -y {tool})")
    t = make_traffic(flows=100, mix="mixed", size="imix")
    n = 1234
    with PcapWriter(tmp_path / "t.pcap") as w:
        w.write_traffic(t, n)
    r = subprocess.run([exe, *args, str(tmp_path / "t.pcap")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == n
    assert all(" 10." in x and "198.1" in x for x in lines)   # every packet decoded as IPv4


def test_tshark_validates_checksums(tmp_path):
    exe = shutil.which("tshark")
    if exe is None:
        pytest.skip("tshark not installed (apt-get install -y tshark)")
    t = make_traffic(flows=200, mix="mixed", size="imix")
    with PcapWriter(tmp_path / "t.pcap") as w:
        w.write_traffic(t, 200)
    on = ["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]
    good = "ip.checksum.status==1 and (udp.checksum.status==1 or tcp.checksum.status==1)"
    r = subprocess.run([exe, *on, "-r", str(tmp_path / "t.pcap"), "-Y", good], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 200


def test_load_traffic(tmp_path, frames):
    t = load_traffic(_write(tmp_path / "a.pcap", frames), max_frame=1920)
    assert t.lengths.tolist() == [len(f) for f in frames] and t.frames.shape[1] == 1920
    assert [t.frame(i) for i in range(len(frames)) if len(frames[i]) <= 1920] == \
           [f for f in frames if len(f) <= 1920]
    assert t.frame(5) == frames[5][:1920]
    with pytest.raises(PcapError, match="no packets"):
        load_traffic(_write(tmp_path / "e.pcap", []))


def test_errors(tmp_path, frames):
    with pytest.raises(PcapError, match="no such file"):
        read_pcap(tmp_path / "missing.pcap")
    (tmp_path / "ng").write_bytes(struct.pack("<I", 0x0A0D0D0A) + bytes(40))
    with pytest.raises(PcapError, match="pcapng is not supported; convert with: editcap -F pcap IN OUT"):
        read_pcap(tmp_path / "ng")
    (tmp_path / "junk").write_bytes(b"hello, this is not a capture file")
    with pytest.raises(PcapError, match="not a pcap"):
        read_pcap(tmp_path / "junk")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(PcapError, match="not a pcap"):
        read_pcap(tmp_path / "empty")
    good = _write(tmp_path / "g.pcap", frames).read_bytes()
    (tmp_path / "hdr").write_bytes(good[:20])
    with pytest.raises(PcapError, match="truncated file header"):
        read_pcap(tmp_path / "hdr")
    (tmp_path / "cut").write_bytes(good[:-5])
    with pytest.raises(PcapError, match="truncated record 6"):
        read_pcap(tmp_path / "cut")
    (tmp_path / "cuthdr").write_bytes(good[:24 + 16 + 60 + 7])
    with pytest.raises(PcapError, match="truncated record 1 .*header"):
        read_pcap(tmp_path / "cuthdr")
    (tmp_path / "sll").write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 113))
    with pytest.raises(PcapError, match=r"unsupported link type 113 \(LINUX_SLL"):
        read_pcap(tmp_path / "sll")
    assert issubclass(PcapError, ValueError)


def test_error_messages_are_one_line(tmp_path):
    (tmp_path / "junk").write_bytes(bytes(100))
    with pytest.raises(PcapError) as e:
        read_pcap(tmp_path / "junk")
    assert "\n" not in str(e.value)


def test_tshark_pcapng_refused_with_hint(tmp_path):
    exe = shutil.which("tshark")
    if exe is None:
        pytest.skip("tshark not installed (apt-get install -y tshark)")
    src = _write(tmp_path / "a.pcap", [bytes(60)] * 3)
    ng = tmp_path / "a.pcapng"
    subprocess.run([exe, "-r", str(src), "-w", str(ng), "-F", "pcapng"], check=True, capture_output=True,
                   timeout=120)
    with pytest.raises(PcapError, match="editcap"):
        read_pcap(ng)


def test_lab_replays_a_capture_once_or_loops_times(tmp_path):
    """A Lab on a capture sends each frame once (tcpreplay's default), or once per pass of
    loops=N, in file order, then drains; the capture of what it forwarded is those frames."""
    from labkit.run.lab import Lab, LabError
    t = make_traffic(flows=100, seed=5)
    with PcapWriter(tmp_path / "c.pcap") as w:
        w.write_traffic(t, n=100)
    frames = read_frames(tmp_path / "c.pcap")
    with Lab(graph="l2fwd", pcap_in=str(tmp_path / "c.pcap"), pcap_out=str(tmp_path / "o.pcap")) as lab:
        r = lab.run()
        assert r.sent == r.forwarded == 100 and r.conserved and r.pool_ok
        r = lab.run(loops=3)
        assert r.sent == r.forwarded == 300 and r.conserved and r.pool_ok
        swapped = [f[6:12] + f[:6] + f[12:] for f in frames]
        assert read_frames(tmp_path / "o.pcap") == swapped * 3
        for bad in (dict(loops=0), dict(loops=-1), dict(loops=True), dict(loops=2.0), dict(loops=10**12),
                    dict(loops=2, seconds=1), dict(loops=2, packets=5), dict(seconds=1, packets=5)):
            with pytest.raises(LabError):
                lab.run(**bad)
    with Lab(graph="l2fwd") as lab:
        with pytest.raises(LabError, match="pcap_in"):
            lab.run(loops=2)
