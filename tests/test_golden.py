"""Golden files: the source labkit generates, pinned (Click tests its configurations
the same way). A change to the generator shows here as a diff of tests/golden/.

When the change is meant, regenerate them and read the diff before committing:

    python tests/test_golden.py --update
"""
import difflib
import sys
from pathlib import Path

import pytest

from labkit import Knobs
from labkit.graph.compile import resolve
from labkit.run.loopgen import module_source, port_for

GOLDEN = Path(__file__).resolve().parent / "golden"

# name -> (graph, port, port options, knobs)
CASES = {
    "ip4-memory-quad-soa": ("ip4", "memory", {}, Knobs()),
    "ip4-memory-single-soa": ("ip4", "memory", {}, Knobs(unroll=1)),
    "ip4-memory-quad-aos": ("ip4", "memory", {}, Knobs(layout="aos")),
    "ip4-memory-quad-interleaved": ("ip4", "memory", {}, Knobs(interleave=True)),
    "ip4-memory-simd-soa": ("ip4", "memory", {}, Knobs(variant="simd")),
    "l2fwd-memory-single-aos-nojit-copy-heap": ("l2fwd", "memory", {},
                                                Knobs(unroll=1, layout="aos", jit=False, copy=True, mempool=False)),
    "acl-device-dual-noprefetch": ("acl", "device", {}, Knobs(unroll=2, prefetch=False)),
    "l2fwd-dispatch-lock": ("l2fwd", "dispatch", {}, Knobs(sync="lock")),
    "l2fwd-ring-fanout-capture": ("l2fwd", "ring", {"fanout": True, "capture": True}, Knobs()),
    "ip4-socket": ("ip4", "socket", {}, Knobs(copy=True)),
    "l2fwd-tap-aos": ("l2fwd", "tap", {}, Knobs(layout="aos")),
}


def generated(name):
    graph, kind, options, knobs = CASES[name]
    g = resolve(graph)
    return module_source(g, knobs, port_for(g, knobs, kind, **options))


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_source_matches_its_golden_file(name):
    path = GOLDEN / f"{name}.py"
    want = path.read_text()
    got = generated(name)
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), str(path), "generated", n=1))
        pytest.fail(f"the generator's output changed; if that is meant, run `python tests/test_golden.py "
                    f"--update` and commit the new golden files:\n{diff[:4000]}")


def test_every_golden_file_is_a_case():
    assert sorted(p.stem for p in GOLDEN.glob("*.py")) == sorted(CASES)


def test_the_golden_files_compile():
    for name in CASES:
        compile(generated(name), name, "exec")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_golden.py --update   (rewrite tests/golden/ from the generator)")
    GOLDEN.mkdir(exist_ok=True)
    for old in GOLDEN.glob("*.py"):
        if old.stem not in CASES:
            old.unlink()
    for name in sorted(CASES):
        (GOLDEN / f"{name}.py").write_text(generated(name))
        print(f"wrote tests/golden/{name}.py")
