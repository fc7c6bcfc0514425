"""RSS: the Toeplitz hash against the specification's vectors, the fast
versions against the reference, frames hashed from the arena, RETA, the CLI."""
import argparse

import numpy as np
import pytest

from labkit import cli as labkit_cli
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.all import IP, TCP, UDP, Ether

from labkit.nic import rss
from labkit.memory.layouts import DATA_OFF, aligned_zeros
from labkit.nic.traffic import KIND_CODES, make_traffic

SLOT = 2048
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = rss.DEFAULT_KEY

# Microsoft's published IPv4 table, in its column order: destination address:port,
# source address:port, IPv4 hash, IPv4 with TCP (the first row is also checked
# against literal values by the CLI tests below).
VECTORS = rss.VERIFICATION_IPV4


# --- the specification's vectors -------------------------------------------------

@pytest.mark.parametrize("hash_fn", [rss.toeplitz, rss.toeplitz_fast], ids=["reference", "fast"])
@pytest.mark.parametrize("dst,dport,src,sport,h2,h4", VECTORS)
def test_microsoft_verification_vectors(hash_fn, dst, dport, src, sport, h2, h4):
    assert hash_fn(KEY, rss.ipv4_tuple(src, dst)) == h2
    assert hash_fn(KEY, rss.ipv4_tuple(src, dst, sport, dport)) == h4


@pytest.mark.parametrize("dst,dport,src,sport,h2,h4", VECTORS)
def test_table_order_trap_destination_first_gives_other_hashes(dst, dport, src, sport, h2, h4):
    """Hashing the table's columns in the order printed (destination first) is wrong."""
    assert rss.toeplitz(KEY, rss.ipv4_tuple(dst, src)) != h2
    assert rss.toeplitz(KEY, rss.ipv4_tuple(dst, src, dport, sport)) != h4


def test_one_set_bit_xors_in_the_key_window_at_its_position():
    k = int.from_bytes(KEY, "big")
    for p in (0, 1, 7, 8, 42, 95):
        data = (1 << (95 - p)).to_bytes(12, "big")            # only bit p of 12 bytes set
        assert rss.toeplitz(KEY, data) == (k >> (320 - 32 - p)) & 0xFFFFFFFF
    assert rss.toeplitz(KEY, b"") == 0 and rss.toeplitz(KEY, bytes(12)) == 0


@pytest.mark.parametrize("fn", [rss.toeplitz, rss.toeplitz_fast, lambda k, d: rss.make_tables(k, len(d))])
def test_key_must_be_four_bytes_longer_than_the_input(fn):
    fn(bytes(16), bytes(12))                                   # exactly enough
    with pytest.raises(ValueError, match=r"key of 15 bytes is too short for 12 bytes.*16 bytes"):
        fn(bytes(15), bytes(12))


@pytest.mark.parametrize("fn", [rss.toeplitz, rss.toeplitz_fast])
def test_key_and_data_must_be_bytes(fn):
    with pytest.raises(ValueError, match="key must be bytes, not int"):       # bytes(40) would be 40 zeros
        fn(40, bytes(12))
    with pytest.raises(ValueError, match="data must be bytes, not str"):
        fn(KEY, "1.2.3.4")


# --- fast == reference ------------------------------------------------------------

@st.composite
def key_and_data(draw):
    data = draw(st.binary(max_size=36))
    key = draw(st.binary(min_size=len(data) + 4, max_size=len(data) + 40))
    return key, data


@SETTINGS
@given(key_and_data())
def test_fast_equals_reference(kd):
    key, data = kd
    assert rss.toeplitz_fast(key, data) == rss.toeplitz(key, data)


@SETTINGS
@given(key_and_data(), st.integers(0, 2**32 - 1))
def test_tables_are_the_reference_per_byte(kd, seed):
    key, data = kd
    tables = rss.make_tables(key, len(data))
    assert tables.dtype == np.uint32 and tables.shape == (len(data), 256)
    i = seed % max(len(data), 1)
    if data:                                                  # row i, value v = a lone byte at position i
        v = seed & 0xFF
        lone = bytes(i) + bytes([v]) + bytes(len(data) - i - 1)
        assert int(tables[i, v]) == rss.toeplitz(key, lone)


@SETTINGS
@given(key_and_data())
def test_compiled_bit_by_bit_equals_reference(kd):
    key, data = kd
    out = np.zeros(1, np.uint32)
    rss.toeplitz_bits_batch(np.frombuffer(key, np.uint8), np.frombuffer(data, np.uint8).reshape(1, -1),
                            np.array([len(data)]), out)
    assert int(out[0]) == rss.toeplitz(key, data)


def test_compiled_bit_by_bit_rejects_a_short_key():
    with pytest.raises(ValueError, match="key 4 bytes longer"):
        rss.toeplitz_bits_batch(np.zeros(15, np.uint8), np.zeros((1, 12), np.uint8), np.array([12]),
                                np.zeros(1, np.uint32))


def test_measure_hash_times_three_versions_that_agree(monkeypatch):
    costs = rss.measure_hash(n=64, reps=2)
    assert list(costs) == ["reference (Python, bit by bit)", "bit by bit (numba)", "table-driven (numba)"]
    assert all(c > 0 for c in costs.values())

    def wrong(tables, data, lengths, out):          # a broken fast version is caught, not timed
        out[:] = 1
    monkeypatch.setattr(rss, "toeplitz_batch", wrong)
    with pytest.raises(AssertionError, match="disagree"):
        rss.measure_hash(n=64, reps=2)


def test_cli_bench_prints_each_version(capsys):
    assert rss.main(cli(action="bench")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Toeplitz hash of an IPv4 4-tuple")
    assert [ln.split("  ")[1].strip() for ln in out[1:]] == list(rss.measure_hash(n=8, reps=1))
    assert out[1].endswith(" 1x the reference")


def test_batch_equals_scalar_on_rows_of_any_length():
    rng = np.random.default_rng(7)
    key = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    data = rng.integers(0, 256, (500, 36), dtype=np.uint8)
    lengths = rng.integers(0, 37, 500)
    lengths[:3] = (0, 12, 36)
    tables = rss.make_tables(key, 36)
    out = np.zeros(500, np.uint32)
    rss.toeplitz_batch(tables, data, lengths, out)
    expect = [rss.toeplitz(key, data[i, :lengths[i]].tobytes()) for i in range(500)]
    assert out.tolist() == expect
    twin = np.zeros(500, np.uint32)
    rss.toeplitz_batch.py_func(tables, data, lengths, twin)   # the JIT-off twin agrees
    assert np.array_equal(out, twin)


@pytest.mark.parametrize("n_tables,length", [(12, 13), (40, 37)])
def test_batch_rejects_rows_longer_than_data_or_tables(n_tables, length):
    data = np.zeros((2, 36), np.uint8)
    with pytest.raises(ValueError, match="lengths"):
        rss.toeplitz_batch(rss.make_tables(KEY, min(n_tables, 36)), data, np.array([12, length]),
                           np.zeros(2, np.uint32))


# --- frames straight from the arena -------------------------------------------------

def arena_with(frames, fill=0xA5):
    """Frames at 2048-byte slots (64-byte aligned), the rest of each slot
    stale bytes: a kernel that read past a frame's length would hash them."""
    arena = aligned_zeros(SLOT * len(frames))
    arena[:] = fill
    bases = np.arange(len(frames), dtype=np.int64) * SLOT
    for b, f in zip(bases, frames):
        arena[b + DATA_OFF:b + DATA_OFF + len(f)] = np.frombuffer(bytes(f), np.uint8)
    return arena, bases


def ref_frame_tuple(frame):
    """The rules of ``hash_ipv4_frames``, in plain Python on the frame's bytes."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4 or frame[14] & 0xF < 5:
        return b""
    ip = frame[14:]
    hlen, total = (ip[0] & 0xF) * 4, int.from_bytes(ip[2:4], "big")
    frag, proto = int.from_bytes(ip[6:8], "big"), ip[9]
    ports = proto in (6, 17) and frag & 0x3FFF == 0 and hlen + 4 <= total and 14 + hlen + 4 <= len(frame)
    return ip[12:20] + (ip[hlen:hlen + 4] if ports else b"")


def hash_frames(frames, lengths=None, key=KEY, twin=False):
    arena, bases = arena_with(frames)
    lengths = np.array([len(f) for f in frames], np.uint16) if lengths is None else lengths
    out = np.full(len(frames), 0xDEADBEEF, np.uint32)
    fn = rss.hash_ipv4_frames.py_func if twin else rss.hash_ipv4_frames
    fn(rss.make_tables(key, 12), arena, bases, lengths, len(frames), out)
    return out.tolist()


def test_traffic_frames_hash_to_their_5_tuple_and_malformed_ones_by_the_rules():
    t = make_traffic(size="imix", flows=300, mix="mixed", malformed=0.1, seed=3)
    frames = [t.frame(i) for i in range(t.frames.shape[0])]
    got = hash_frames(frames, t.lengths)
    for i, f in enumerate(frames):
        if t.kinds[i] != KIND_CODES["valid"]:
            continue
        p = Ether(f)
        l4 = p[TCP] if TCP in p else p[UDP]
        assert got[i] == rss.toeplitz(KEY, rss.ipv4_tuple(p[IP].src, p[IP].dst, l4.sport, l4.dport)), i
    flow0 = rss.toeplitz(KEY, ref_frame_tuple(frames[0]))
    expect = {"runt": 0, "unknown_ethertype": 0, "ip4_truncated": 0, "ip4_bad_version": 0, "ip4_bad_ihl": 0,
              # a NIC hashes what it can parse: it checks neither lengths, checksums nor TTL
              "ip4_bad_length": flow0, "ip4_bad_checksum": flow0, "ttl_expired": flow0, "ip4_options": flow0}
    seen = set()
    for i in np.flatnonzero(t.kinds != KIND_CODES["valid"]):
        name = t.KIND_NAMES[int(t.kinds[i])]
        assert got[i] == expect[name], name
        seen.add(name)
    assert seen == set(expect)
    assert got == [rss.toeplitz(KEY, ref_frame_tuple(f)) for f in frames]


def udp_frame(**ip):
    return bytes(Ether() / IP(src="10.1.2.3", dst="198.18.0.7", **ip) / UDP(sport=1111, dport=2222) / bytes(18))


def test_fragments_and_other_protocols_hash_the_addresses_only():
    four = rss.toeplitz(KEY, rss.ipv4_tuple("10.1.2.3", "198.18.0.7", 1111, 2222))
    two = rss.toeplitz(KEY, rss.ipv4_tuple("10.1.2.3", "198.18.0.7"))
    frames = [udp_frame(), udp_frame(flags="DF"), udp_frame(flags="MF"), udp_frame(frag=3),
              udp_frame(flags="MF", frag=8), udp_frame(proto=1), udp_frame(proto=47),
              bytes(Ether() / IP(src="10.1.2.3", dst="198.18.0.7") / TCP(sport=1111, dport=2222))]
    assert hash_frames(frames) == [four, four, two, two, two, two, two, four]


def test_ports_must_be_inside_the_frame_length_not_just_the_slot():
    f = udp_frame()
    four = rss.toeplitz(KEY, rss.ipv4_tuple("10.1.2.3", "198.18.0.7", 1111, 2222))
    two = rss.toeplitz(KEY, rss.ipv4_tuple("10.1.2.3", "198.18.0.7"))
    # The slot holds all of f, but the NIC says only the first n bytes arrived.
    got = hash_frames([f] * 5, np.array([len(f), 38, 37, 34, 33], np.uint16))
    assert got == [four, four, two, two, 0]
    # ... and inside the datagram: an IPv4 total length of 20 or 23 leaves them out.
    assert hash_frames([udp_frame(len=24), udp_frame(len=23), udp_frame(len=20)]) == [four, two, two]


@st.composite
def odd_frames(draw):
    """IPv4-ish frames with every field that steers the parser drawn, cut anywhere."""
    ethertype = draw(st.sampled_from([b"\x08\x00"] * 4 + [b"\x86\xdd", b"\x81\x00", b"\x08\x06"]))
    ver_ihl = draw(st.sampled_from([0x45, 0x46, 0x4F, 0x44, 0x40, 0x65, 0x55]) | st.integers(0, 255))
    total = draw(st.integers(0, 100) | st.integers(0, 0xFFFF))
    frag = draw(st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x1FFF, 0x8000]) | st.integers(0, 0xFFFF))
    proto = draw(st.sampled_from([6, 17, 1, 47]))
    ip = (bytes([ver_ihl, 0]) + total.to_bytes(2, "big") + b"\0\0" + frag.to_bytes(2, "big")
          + bytes([64, proto, 0, 0]) + draw(st.binary(min_size=8, max_size=8)))
    full = bytes(12) + ethertype + ip + draw(st.binary(max_size=70))
    return full[:draw(st.integers(0, len(full)))]


@SETTINGS
@given(odd_frames(), st.integers(0, 200))
def test_malformed_frames_never_read_past_the_frame_or_the_arena(frame, overclaim):
    expect = rss.toeplitz(KEY, ref_frame_tuple(frame))
    assert hash_frames([frame]) == [expect]                   # stale bytes after it are ignored
    # An arena that ends where the frame ends: any over-read raises IndexError
    # (NUMBA_BOUNDSCHECK=1 in the compiled kernel, numpy in the twin), even when
    # the length claims more bytes than the arena has.
    arena = np.frombuffer(bytes(DATA_OFF) + frame, np.uint8).copy()
    tables = rss.make_tables(KEY, 12)
    for length in (len(frame), len(frame) + overclaim):
        for fn in (rss.hash_ipv4_frames, rss.hash_ipv4_frames.py_func):
            out = np.zeros(1, np.uint32)
            fn(tables, arena, np.zeros(1, np.int64), np.array([length], np.int64), 1, out)
            assert int(out[0]) == expect


def test_hash_ipv4_frames_rejects_short_tables():
    arena, bases = arena_with([udp_frame()])
    with pytest.raises(ValueError, match="tables"):
        rss.hash_ipv4_frames(rss.make_tables(KEY, 8), arena, bases, np.array([60]), 1, np.zeros(1, np.uint32))


# --- symmetric key ---------------------------------------------------------------

addresses = st.integers(0, 2**32 - 1)
ports = st.integers(0, 0xFFFF)


@SETTINGS
@given(addresses, addresses, ports, ports)
def test_symmetric_key_hashes_both_directions_alike(a, b, pa, pb):
    k = rss.SYMMETRIC_KEY
    assert rss.toeplitz(k, rss.ipv4_tuple(a, b, pa, pb)) == rss.toeplitz(k, rss.ipv4_tuple(b, a, pb, pa))
    assert rss.toeplitz(k, rss.ipv4_tuple(a, b)) == rss.toeplitz(k, rss.ipv4_tuple(b, a))


def test_default_key_is_not_symmetric():
    rng = np.random.default_rng(5)
    differ = 0
    for a, b, pa, pb in zip(*(rng.integers(0, 2**32, 20), rng.integers(0, 2**32, 20),
                              rng.integers(0, 2**16, 20), rng.integers(0, 2**16, 20))):
        differ += rss.toeplitz(KEY, rss.ipv4_tuple(a, b, pa, pb)) != rss.toeplitz(KEY, rss.ipv4_tuple(b, a, pb, pa))
    assert differ >= 1


# --- what is hashed ------------------------------------------------------------------

def test_ipv4_tuple_is_src_dst_sport_dport_in_network_order():
    assert rss.ipv4_tuple("1.2.3.4", 0x05060708, 0x090A, 0x0B0C) == bytes(range(1, 13))
    assert rss.ipv4_tuple(np.uint32(0x01020304), "5.6.7.8") == bytes(range(1, 9))


@pytest.mark.parametrize("args,msg", [
    (("1.2.3", "1.2.3.4"), r"source address '1\.2\.3'.*dotted IPv4"),
    (("1.2.3.4", "256.0.0.1"), r"destination address '256\.0\.0\.1'"),
    ((2**32, "1.2.3.4"), "integer 0..4294967295"),
    ((True, "1.2.3.4"), "source address"),
    (("1.2.3.4", "1.2.3.5", 1, None), "both the source and destination port, or neither"),
    (("1.2.3.4", "1.2.3.5", None, 1), "both"),
    (("1.2.3.4", "1.2.3.5", 70000, 1), r"source port 70000: use an integer 0\.\.65535"),
    (("1.2.3.4", "1.2.3.5", 1, -1), "destination port -1"),
    (("1.2.3.4", "1.2.3.5", 1, "80"), "destination port '80'"),
])
def test_ipv4_tuple_says_what_to_use(args, msg):
    with pytest.raises(ValueError, match=msg):
        rss.ipv4_tuple(*args)


def test_parse_key():
    assert rss.parse_key("default") == rss.DEFAULT_KEY and rss.parse_key("Symmetric") == rss.SYMMETRIC_KEY
    assert rss.parse_key(rss.DEFAULT_KEY.hex()) == rss.DEFAULT_KEY
    assert rss.parse_key("0x" + "ab" * 16) == b"\xab" * 16


@pytest.mark.parametrize("text,msg", [
    ("abc", "odd number of hex digits"),
    ("00" * 15, r"key of 15 bytes is too short.*at least 32 hex digits"),
    ("zz" * 20, "not hex"),
    ("", "not hex"),
    ("0x", "not hex"),
])
def test_parse_key_says_what_to_use(text, msg):
    with pytest.raises(ValueError, match=msg):
        rss.parse_key(text)


# --- the indirection table --------------------------------------------------------------

def test_reta_default_fill_and_low_bits():
    r = rss.Reta(3)
    assert r.size == 128 and r.table.tolist() == [i % 3 for i in range(128)]
    assert r.queue(0x51ccc178) == (0x78 % 3)                  # low 7 bits: 0x78 = 120
    assert r.queue(127) == 127 % 3 and r.queue(128) == 0 and r.queue(0xFFFFFFFF) == 127 % 3
    r.table[5] = 2                                            # rebalancing rewrites entries
    assert r.queue(0x100 + 5) == 2


def test_reta_queues_is_queue_of_each():
    r = rss.Reta(5, size=64)
    h = np.random.default_rng(1).integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    assert r.queues(h).tolist() == [r.queue(int(x)) for x in h]
    assert r.queues([]).size == 0


@pytest.mark.parametrize("kw,msg", [
    (dict(n_queues=4, size=100), "size=100: use a power of two"),
    (dict(n_queues=4, size=0), "power of two"),
    (dict(n_queues=0), r"n_queues=0: use 1\.\.128"),
    (dict(n_queues=129), "cannot spread over more"),
    (dict(n_queues=2.0), "n_queues=2.0"),
])
def test_reta_says_what_to_use(kw, msg):
    with pytest.raises(ValueError, match=msg):
        rss.Reta(**kw)


def test_reta_rejects_bad_hashes():
    r = rss.Reta(4)
    for bad in (-1, 2**32, 1.5):
        with pytest.raises(ValueError, match="32-bit unsigned"):
            r.queue(bad)
    with pytest.raises(ValueError, match="32-bit unsigned"):
        r.queues(np.array([1.0]))
    with pytest.raises(ValueError, match="32-bit unsigned"):
        r.queues(np.array([-1, 2]))


def spread_ok(key, n_flows=10_000, n_queues=4, tolerance=0.10, seed=11):
    """Random IPv4 4-tuples over a round-robin RETA: every queue within
    ±tolerance of n_flows / n_queues? Queue counts are Binomial(10000, 1/4)
    for a hash whose low 7 bits are uniform: sd = sqrt(10000 * 1/4 * 3/4) = 43,
    so ±10% (±250) is 5.8 sd: a queue falls outside with probability < 1e-8,
    for any seed, not only the fixed one."""
    tuples = np.random.default_rng(seed).integers(0, 256, (n_flows, 12), dtype=np.uint8)
    hashes = np.zeros(n_flows, np.uint32)
    rss.toeplitz_batch(rss.make_tables(key, 12), tuples, np.full(n_flows, 12), hashes)
    counts = np.bincount(rss.Reta(n_queues).queues(hashes), minlength=n_queues)
    even = n_flows / n_queues
    return bool(np.all(np.abs(counts - even) <= tolerance * even)), counts


def test_default_key_spreads_random_flows_evenly():
    ok, counts = spread_ok(KEY)
    assert ok, counts
    bad, counts = spread_ok(bytes(40))                        # the check has teeth: a zero key hashes all to 0
    assert not bad and counts.tolist() == [10_000, 0, 0, 0]


# --- the command ----------------------------------------------------------------------

def cli(*argv, action="hash"):
    p = argparse.ArgumentParser(prog="labkit")
    labkit_cli._rss_parser(p.add_subparsers(dest="command", required=True))
    return p.parse_args(["rss", action, *argv])


FIRST = ("--src", "66.9.149.187", "--dst", "161.142.100.80")


@pytest.mark.parametrize("argv,printed", [
    (FIRST + ("--sport", "2794", "--dport", "1766"), "0x51ccc178\n"),
    (FIRST, "0x323e8fc2\n"),
    (FIRST + ("--sport", "2794", "--dport", "1766", "--queues", "7"), "0x51ccc178\nqueue 1 of 7\n"),
    (FIRST + ("--key", rss.DEFAULT_KEY.hex()), "0x323e8fc2\n"),
])
def test_cli_prints_the_hash(capsys, argv, printed):
    assert rss.main(cli(*argv)) == 0
    assert capsys.readouterr().out == printed


def test_cli_symmetric_key_both_directions(capsys):
    rss.main(cli(*FIRST, "--sport", "2794", "--dport", "1766", "--key", "symmetric"))
    rss.main(cli("--src", "161.142.100.80", "--dst", "66.9.149.187", "--sport", "1766", "--dport", "2794",
                 "--key", "symmetric"))
    a, b = capsys.readouterr().out.split()
    assert a == b != "0x51ccc178"


@pytest.mark.parametrize("argv,msg", [
    (("--src", "66.9.149", "--dst", "1.2.3.4"), "source address '66.9.149': use a dotted IPv4 address"),
    (("--src", "1.2.3.4", "--dst", "x"), "destination address 'x'"),
    (FIRST + ("--sport", "70000", "--dport", "1"), r"source port 70000: use an integer 0\.\.65535"),
    (FIRST + ("--sport", "http", "--dport", "1"), r"source port 'http' is not an integer; use 0\.\.65535"),
    (FIRST + ("--sport", "1"), "give both the source and destination port"),
    (FIRST + ("--key", "abc"), "odd number of hex digits"),
    (FIRST + ("--key", "00" * 8), "key of 8 bytes is too short"),
    (FIRST + ("--key", "nope"), "'nope' is not hex; use 'default', 'symmetric'"),
    (FIRST + ("--queues", "0"), r"n_queues=0: use 1\.\.128"),
    (FIRST + ("--queues", "four"), r"--queues 'four' is not an integer"),
    (("--src", "1.2.3.4"), "rss hash needs --src and --dst"),
])
def test_cli_bad_input_is_one_line_saying_what_to_use(capsys, argv, msg):
    with pytest.raises(ValueError, match=msg) as e:
        rss.main(cli(*argv))
    assert "\n" not in str(e.value)
    assert capsys.readouterr().out == ""                      # nothing half-printed


