"""XDP programs (labkit.nic.xdp): built once per source text, refused by the verifier
with its log when they read past the frame, attached to a lab veth where they see
every frame sent to it, and detached again whatever ends the `with` body."""
import os
import time

import pytest
from conftest import lab_network

from labkit.nic import afpacket as af
from labkit.nic import labnet, xdp

WHY = xdp.why_not() or labnet.why_not()
needs_xdp = pytest.mark.skipif(WHY is not None, reason=f"needs XDP on the lab network: {WHY}")

OUT_OF_BOUNDS = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int peek_too_far(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;

	return data[14] == 0x45 ? XDP_PASS : XDP_DROP;	/* never checked against data_end */
}

char _license[] SEC("license") = "GPL";
"""


@pytest.mark.skipif(xdp.why_not_build() is not None, reason=f"cannot build XDP programs: {xdp.why_not_build()}")
def test_a_source_is_built_once_and_a_bad_one_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    first = xdp.build("count_drop")
    assert first.exists() and first == xdp.build("count_drop")
    src = tmp_path / "count_drop.c"
    src.write_text(xdp.SOURCES.joinpath("count_drop.c").read_text() + "\n/* another text */\n")
    assert xdp.build(src) != first
    src.write_text("int this is not C;")
    with pytest.raises(xdp.XdpError, match="clang could not compile count_drop.c"):
        xdp.build(src)


def test_without_clang_it_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert xdp.why_not() == xdp.why_not_build() == f"clang is not installed ({xdp.INSTALL})"
    with pytest.raises(xdp.XdpError, match="apt-get install clang"):
        xdp.build("count_drop")


@needs_xdp
def test_the_verifier_refuses_a_read_past_the_frame_and_shows_its_log(tmp_path):
    src = tmp_path / "oob.c"
    src.write_text(OUT_OF_BOUNDS)
    with pytest.raises(xdp.XdpError) as e:
        xdp.Program(src, "peek_too_far")
    assert "the kernel refused peek_too_far" in str(e.value)
    assert "invalid access to packet" in str(e.value)          # the verifier's own words
    with pytest.raises(xdp.XdpError, match="no program named nope"):
        xdp.Program("count_drop", "nope")


@pytest.fixture(scope="module")
def lab_net():
    yield from lab_network(f"labkit-x{os.getpid()}", tap=False)


def _send(n):
    """n minimum-size frames from the generator's port to the DUT's."""
    gns = labnet.gen_ns()
    with af.packet_socket(gns, labnet.GEN_TX) as s:
        af.bind(s, gns, labnet.GEN_TX, 0)
        frame = bytes.fromhex("020000000001" "020000000002" "0800") + bytes(46)
        for _ in range(n):
            s.send(frame)


def _wait_for(fn, want, seconds=5.0):
    end = time.monotonic() + seconds
    while fn() != want and time.monotonic() < end:
        time.sleep(0.01)
    return fn()


@needs_xdp
def test_count_drop_sees_every_frame_and_is_detached_after(lab_net):
    dns = labnet.dut_ns()
    assert xdp.attached_id(dns, labnet.DUT_RX) == 0
    with xdp.Program("count_drop", "count_drop") as p:
        p.attach(dns, labnet.DUT_RX)
        assert xdp.attached_id(dns, labnet.DUT_RX) != 0
        assert "processed" in p.verifier_log                     # the verifier's summary of an accepted program
        _send(1000)
        assert _wait_for(lambda: int(p.counters("frames")[0]), 1000) == 1000
        assert list(p.counters("frames")) == [1000]
    assert xdp.attached_id(dns, labnet.DUT_RX) == 0


@needs_xdp
def test_an_exception_detaches_and_bad_requests_say_what_is_wrong(lab_net):
    dns = labnet.dut_ns()
    with pytest.raises(ZeroDivisionError):
        with xdp.Program("count_drop", "count_drop") as p:
            p.attach(dns, labnet.DUT_RX)
            1 / 0
    assert xdp.attached_id(dns, labnet.DUT_RX) == 0
    with xdp.Program("count_drop", "count_drop") as p:
        with pytest.raises(xdp.XdpError, match="no interface lk-nope"):
            p.attach(dns, "lk-nope")
        with pytest.raises(xdp.XdpError, match="use 'native'"):
            p.attach(dns, labnet.DUT_RX, mode="offload")
        with pytest.raises(xdp.XdpError, match="no map named nope"):
            p.counters("nope")
