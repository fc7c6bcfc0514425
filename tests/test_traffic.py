"""make_traffic builds the frames we claim, checked against scapy's parser."""
import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.inet6 import IPv6

from labkit.memory import layouts as L
from labkit.nic.traffic import (DUT_MAC, FORWARDED_KINDS, GEN_MAC, KIND_CODES, KIND_NAMES, SHUFFLED_MIN, Traffic,
                                make_traffic)


def _checksums_ok(raw):
    """scapy recomputes every checksum when the fields are deleted."""
    p = Ether(raw)
    fresh = p.copy()
    del fresh[IP].chksum
    l4 = TCP if TCP in p else UDP
    del fresh[l4].chksum
    fresh = Ether(bytes(fresh))
    return p[IP].chksum == fresh[IP].chksum and p[l4].chksum == fresh[l4].chksum


@pytest.mark.parametrize("size", [60, 64, 128, 590, 1514, 1920])
def test_sizes_and_stride(size):
    t = make_traffic(size=size, flows=16)
    assert t.frames.dtype == np.uint8 and t.lengths.dtype == np.uint16
    assert t.frames.shape == (16, -(-size // 64) * 64)
    assert np.all(t.lengths == size)
    p = Ether(t.frame(0))
    assert p[IP].len == size - 14 and p[UDP].len == size - 34


@pytest.mark.parametrize("mix", ["udp", "tcp", "mixed"])
def test_headers_and_checksums(mix):
    t = make_traffic(size=64, flows=64, mix=mix, seed=3)
    protos = []
    for i in range(64):
        p = Ether(t.frame(i))
        assert p.dst == "02:00:00:00:00:01" and p.src == "02:00:00:00:00:02"
        ip = p[IP]
        assert (ip.version, ip.ihl, ip.ttl, ip.flags.value, ip.frag) == (4, 5, 64, 0, 0)
        assert ip.src.startswith("10.") and ip.dst.startswith(("198.18.", "198.19."))
        assert _checksums_ok(t.frame(i))
        protos.append(ip.proto)
    want = {"udp": {17: 64}, "tcp": {6: 64}, "mixed": {17: 32, 6: 32}}[mix]
    assert dict(zip(*np.unique(protos, return_counts=True))) == want


def test_flows_distinct_and_seq_interleaved():
    t = make_traffic(flows=5000, mix="mixed")
    tuples = set()
    for i in range(0, 5000, 7):
        ip = Ether(t.frame(i))[IP]
        tuples.add((ip.src, ip.dst, ip.proto, ip.payload.sport, ip.payload.dport))
    assert len(tuples) == len(range(0, 5000, 7))
    hdr = t.frames[:5000, 14:38]
    assert len({r.tobytes() for r in hdr}) == 5000
    assert np.all(t.seq[1:] != t.seq[:-1])
    assert np.all(np.bincount(t.seq, minlength=5000) == np.bincount(t.seq).min())


def test_dst_pool_is_used():
    pool = np.array([0x0A010203, 0xC0A80001, 0x08080808], dtype=np.uint32)
    t = make_traffic(flows=30, dst=pool)
    got = {int.from_bytes(t.frame(i)[30:34], "big") for i in range(30)}
    assert got == set(pool.tolist())


@pytest.mark.parametrize("share", [0.0, 0.01, 0.1, 0.37, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("flows", [1, 100, 10_000])
def test_malformed_share(share, flows):
    t = make_traffic(flows=flows, malformed=share, seed=7)
    bad = t.kinds[t.seq] != 0
    assert abs(bad.mean() - share) <= 0.02
    if share == 0.0:
        assert t.frames.shape[0] == flows and not t.kinds.any()
    elif share < 1.0:
        assert set(np.unique(t.seq[~bad])) == set(range(flows))


def test_each_malformed_kind_has_its_defect():
    t = make_traffic(flows=4, malformed=0.5)
    by_kind = {}
    for i in np.flatnonzero(t.kinds):
        by_kind.setdefault(KIND_NAMES[int(t.kinds[i])], []).append(t.frame(i))
    assert set(by_kind) == set(KIND_CODES) - {"valid"}
    assert all(len(f) < 14 for f in by_kind["runt"])
    types = sorted(Ether(f).type for f in by_kind["unknown_ethertype"])
    assert types == [L.ETHERTYPE_ARP, L.ETHERTYPE_IPV6]
    for f in by_kind["unknown_ethertype"]:
        assert ARP in Ether(f) or IPv6 in Ether(f)
    for f in by_kind["ip4_truncated"]:
        assert 14 <= len(f) < 34 and Ether(f).type == L.ETHERTYPE_IPV4
    (f,) = by_kind["ip4_bad_version"]
    assert IP(f[14:]).version != 4 and _ip_csum_ok(f)
    (f,) = by_kind["ip4_bad_ihl"]
    assert IP(f[14:]).ihl < 5 and _ip_csum_ok(f)
    (f,) = by_kind["ip4_bad_length"]
    assert IP(f[14:]).len > len(f) - 14 and _ip_csum_ok(f)
    (f,) = by_kind["ip4_bad_checksum"]
    assert not _ip_csum_ok(f)
    assert sorted(Ether(f)[IP].ttl for f in by_kind["ttl_expired"]) == [0, 1]
    assert all(_ip_csum_ok(f) for f in by_kind["ttl_expired"])
    (f,) = by_kind["ip4_options"]
    p = Ether(f)
    assert p[IP].ihl == 6 and p[IP].options and _checksums_ok(f) and p[IP].len == len(f) - 14
    assert KIND_CODES["ip4_options"] in FORWARDED_KINDS


def _ip_csum_ok(f):
    """RFC 1071: the one's-complement sum over a correct header is 0xFFFF."""
    s = sum(int.from_bytes(f[14 + i:16 + i], "big") for i in range(0, 20, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def test_malformed_frames_use_flow0_addresses():
    t = make_traffic(flows=8, malformed=0.2)
    ttl = [i for i in np.flatnonzero(t.kinds == KIND_CODES["ttl_expired"])]
    assert Ether(t.frame(ttl[0]))[IP].dst == Ether(t.frame(0))[IP].dst


def test_imix_proportions():
    t = make_traffic(size="imix", flows=1200)
    counts = {int(s): int(c) for s, c in zip(*np.unique(t.lengths[t.seq], return_counts=True))}
    total = sum(counts.values())
    assert set(counts) == {60, 590, 1514}
    assert counts[60] * 12 == total * 7 and counts[590] * 12 == total * 4 and counts[1514] * 12 == total
    assert t.frames.shape[1] == 1536


def test_deterministic():
    a = make_traffic(flows=300, mix="mixed", malformed=0.1, seed=5, size="imix")
    b = make_traffic(flows=300, mix="mixed", malformed=0.1, seed=5, size="imix")
    c = make_traffic(flows=300, mix="mixed", malformed=0.1, seed=6, size="imix")
    for f in ("frames", "lengths", "seq", "kinds"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.frames, c.frames)


def test_million_flows_fast():
    import time
    t0 = time.perf_counter()
    t = make_traffic(flows=1_000_000, mix="mixed", malformed=0.01)
    assert time.perf_counter() - t0 < 10
    assert t.frames.shape == (1_000_000 + 11, 64)


@pytest.mark.parametrize("kw, word", [
    (dict(size=59), "size"), (dict(size=2000), "size"), (dict(size="big"), "size"),
    (dict(size=64.0), "size"), (dict(size="imix", max_frame=1500), "imix"),
    (dict(flows=0), "flows"), (dict(flows=1_000_001), "flows"), (dict(flows=True), "flows"),
    (dict(mix="icmp"), "mix"), (dict(malformed=1.5), "malformed"), (dict(malformed=-0.1), "malformed"),
    (dict(seed=-1), "seed"), (dict(src_mac=b"\x01"), "src_mac"), (dict(dst_mac="aa"), "dst_mac"),
    (dict(dst=np.array([], dtype=np.uint32)), "dst"), (dict(dst=[-1]), "dst"),
    (dict(max_frame=10), "max_frame"),
])
def test_bad_inputs(kw, word):
    with pytest.raises(ValueError) as e:
        make_traffic(**kw)
    msg = str(e.value)
    assert word in msg and "use" in msg and "\n" not in msg


def test_from_frames_keeps_oversized_by_length():
    frames = [bytes(range(60)), bytes(3000), b"\x01" * 10]
    t = Traffic.from_frames(frames, max_frame=1920)
    assert t.frames.shape == (3, 1920) and list(t.lengths) == [60, 3000, 10]
    assert list(t.seq) == [0, 1, 2] and not t.kinds.any()
    assert t.frame(0) == frames[0] and t.frame(2) == frames[2] and len(t.frame(1)) == 1920
    small = Traffic.from_frames([b"\xff" * 70])
    assert small.frames.shape == (1, 128)
    with pytest.raises(ValueError, match="at least one"):
        Traffic.from_frames([])


def test_macs_and_kind_names():
    assert GEN_MAC == bytes.fromhex("020000000002") and DUT_MAC == bytes.fromhex("020000000001")
    assert Traffic.KIND_NAMES[0] == "valid"
    assert {"runt", "unknown_ethertype", "ip4_truncated", "ip4_bad_version", "ip4_bad_ihl",
            "ip4_bad_length", "ip4_bad_checksum", "ttl_expired"} < set(KIND_NAMES.values())


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_an_order_sends_the_same_frames_as_often(order):
    spread = make_traffic(flows=256, mix="mixed", malformed=0.3, seed=4)
    other = make_traffic(flows=256, mix="mixed", malformed=0.3, seed=4, order=order)
    assert np.array_equal(other.frames, spread.frames) and other.spec["order"] == order
    times = np.bincount(other.seq, minlength=len(spread.frames))
    assert (times == (other.seq.size // spread.seq.size) * np.bincount(spread.seq, minlength=len(spread.frames))).all()
    assert not np.array_equal(other.seq[:spread.seq.size], spread.seq)
    assert np.array_equal(make_traffic(flows=256, mix="mixed", malformed=0.3, seed=4, order=order).seq, other.seq)
    reps = 1 if order == "sorted" else -(-SHUFFLED_MIN // spread.seq.size)      # shuffled: long, see SHUFFLED_MIN
    assert other.seq.size == reps * spread.seq.size


def test_sorted_groups_kinds_and_protocols_and_keeps_the_flows_order():
    spread = make_traffic(flows=256, mix="mixed", malformed=0.3, seed=4)
    t = make_traffic(flows=256, mix="mixed", malformed=0.3, seed=4, order="sorted")
    kinds, proto = t.kinds[t.seq], t.frames[t.seq, 23]
    key = kinds.astype(int) * 256 + proto
    assert (np.diff(key) >= 0).all()                                  # one run per (kind, protocol)
    udp = t.seq[(kinds == 0) & (proto == 17)]
    assert np.array_equal(udp, spread.seq[(spread.kinds[spread.seq] == 0) & (spread.frames[spread.seq, 23] == 17)])


def test_the_command_line_knows_the_orders():
    from labkit import cli
    from labkit.nic.traffic import ORDERS
    assert cli.ORDERS == ORDERS
