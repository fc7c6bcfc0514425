"""labkit.course.lessons.jit (exercise 11): the reference classifier is a first-match
classifier, the table loop and the specialized code agree with it on every
input the exercise uses, the generated source has the rules baked in, and the
inputs are what they claim. No test asserts a time."""
import numpy as np
import pytest

from labkit.course import exercise as ex
from labkit.course.lessons import jit as lesson
from labkit.course.lessons.jit import DENY, PERMIT, Rule


def _table_verdicts(rules, default, d, p, q):
    out = np.full(len(d), 0xEE, np.uint8)
    lesson.classify_table(lesson.rule_table(rules).reshape(-1, lesson.T_COLS), default, d, p, q, out)
    return out


# ---- the reference ----------------------------------------------------------------

def test_reference_first_match_and_default_by_hand():
    rules = [lesson.rule("10.0.0.0/8", 17, 53, PERMIT), lesson.rule("0.0.0.0/0", 6, (135, 139), DENY),
             lesson.rule("192.0.2.7/32", 0, "any", 4)]
    d, p, q = lesson.make_packets([0x0A010203, 0x0A010203, 0xC0000207, 0x08080808, 0x0A000000, 0xC0000207],
                                  [17, 6, 17, 6, 6, 17], [53, 139, 53, 140, 135, 54])
    assert lesson.reference(rules, 9, d, p, q).tolist() == [PERMIT, DENY, 4, 9, DENY, 4]
    assert lesson.reference([], 7, d, p, q).tolist() == [7] * 6


def test_rule_helpers():
    assert lesson.mask_of(0) == 0 and lesson.mask_of(8) == 0xFF000000 and lesson.mask_of(32) == 0xFFFFFFFF
    assert lesson.rule("10.0.0.0/8", 17, 53, PERMIT) == Rule(0x0A000000, 8, 17, 53, 53, PERMIT)
    assert lesson.rule(dport="any") == Rule(0, 0, 0, 0, 65535, DENY)
    for bad in (Rule(0x0A000001, 8, 0, 0, 1, 0), Rule(0, 33, 0, 0, 1, 0), Rule(0, 0, 0, 5, 4, 0),
                Rule(0, 0, 0, 0, 70000, 0), Rule(0, 0, 300, 0, 1, 0), Rule(0, 0, 0, 0, 1, 256)):
        with pytest.raises(ValueError):
            lesson.validate(bad)


@pytest.mark.parametrize("name,rules,default,pk", lesson.edge_cases(), ids=[c[0] for c in lesson.edge_cases()])
def test_edge_cases_table_and_specialized_agree_with_the_reference(name, rules, default, pk):
    want = lesson.reference(rules, default, *pk)
    assert _table_verdicts(rules, default, *pk).tolist() == want.tolist()
    assert lesson.verdicts(lesson.specialize(rules, default), *pk).tolist() == want.tolist()


def test_edge_cases_mean_what_they_say():
    cases = {c[0]: c for c in lesson.edge_cases()}
    _, rules, default, pk = cases["port range bounds"]
    assert lesson.reference(rules, default, *pk).tolist() == [PERMIT, DENY, DENY, DENY, PERMIT, PERMIT]
    _, rules, default, pk = cases["first match wins"]
    assert lesson.reference(rules, default, *pk).tolist() == [PERMIT, PERMIT, 4, 2]
    _, rules, default, pk = cases["catch-all rule"]
    assert 7 not in lesson.reference(rules, default, *pk).tolist()      # the default is never used
    _, rules, default, pk = cases["prefix bounds"]
    assert lesson.reference(rules, default, *pk).tolist() == [PERMIT, DENY, DENY, PERMIT, 3, PERMIT, PERMIT]
    for name in ("no rules, default permit", "no rules, default 7"):
        _, rules, default, pk = cases[name]
        assert rules == [] and set(lesson.reference(rules, default, *pk).tolist()) == {default}


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 60])
def test_random_rules_table_and_specialized_agree(n):
    rules = lesson.random_rules(n, seed=n + 3, actions=(PERMIT, DENY, 2))
    pk = lesson.packets_for(rules, 2000, seed=n)
    want = lesson.reference(rules, 5, *pk)
    assert _table_verdicts(rules, 5, *pk).tolist() == want.tolist()
    fn = lesson.specialize(rules, 5)
    assert lesson.verdicts(fn, *pk).tolist() == want.tolist()
    out = np.zeros(2000, np.uint8)
    fn.py_func(*pk, out)                                   # the same source, interpreted
    assert out.tolist() == want.tolist()


def test_packets_for_hits_rules_and_random_rules_have_no_catch_all():
    rules = lesson.random_rules(50, seed=1)
    assert all(r.plen >= 8 for r in rules)                # no rule matches a whole protocol
    d, p, q = lesson.packets_for(rules, 4000, seed=1, hit=0.5)
    assert (d.dtype, p.dtype, q.dtype) == (np.uint32, np.uint8, np.uint16)
    matched = sum(any(lesson.matches(r, int(a), int(b), int(c)) for r in rules)
                  for a, b, c in zip(d.tolist(), p.tolist(), q.tolist()))
    assert 0.4 * 4000 < matched < 0.75 * 4000             # the half made to hit, and a few random ones
    assert len(set(lesson.reference(rules, 9, d, p, q).tolist())) == 3    # permit, deny and the default


# ---- the specialized code -----------------------------------------------------------

def test_generated_source_has_the_rules_and_no_table():
    rules = [lesson.rule("10.0.0.0/8", 17, 53, PERMIT), lesson.rule("0.0.0.0/0", 6, (135, 139), DENY),
             lesson.rule("192.0.2.7/32", 0, "any", DENY), lesson.rule("0.0.0.0/0", 0, (1024, 65535), 3)]
    fn = lesson.specialize(rules)
    lesson.assert_compiled(fn)
    src = lesson.source_of(fn)
    for r in rules:
        for v in lesson.literals(r):
            assert lesson.has_literal(src, v), v
    assert "(d & 0xff000000) == 0x0a000000 and p == 17 and q == 53" in src
    assert "p == 6 and 135 <= q <= 139" in src
    assert "d == 0xc0000207:" in src                        # a /32 is an equality, any proto/port no test
    assert "q >= 1024:" in src
    assert lesson.params_of(fn) == lesson.PARAMS
    assert not fn.py_func.__code__.co_freevars


def test_catch_all_ends_the_chain_and_empty_rules_give_the_default():
    src = lesson.classifier_source([Rule(0, 0, 6, 22, 22, 1), Rule(0, 0, 0, 0, 65535, 2), Rule(0, 0, 17, 53, 53, 3)])
    assert "else:\n            out[i] = 2" in src and "q == 53" not in src
    assert lesson.classifier_source([Rule(0, 0, 0, 0, 65535, 2)]).count("if True:") == 1
    assert "out[i] = 7" in lesson.classifier_source([], default=7)


def test_specialized_compiles_without_nrt():
    rules = lesson.random_rules(10, seed=2)
    pk = lesson.packets_for(rules, 100)
    ok, why = ex.compiles_without_nrt(lesson.specialize(rules), *pk, np.zeros(100, np.uint8))
    assert ok, why


def test_the_checks_helpers_fail_on_a_starter_like_classifier():
    table = lesson.rule_table([Rule(0, 0, 6, 22, 22, 1)])

    def classify(dst, proto, dport, out):               # a Python wrapper around the table loop
        lesson.classify_table(table, 0, dst, proto, dport, out)
    with pytest.raises(AssertionError, match="not a numba-compiled"):
        lesson.assert_compiled(classify)
    with pytest.raises(AssertionError, match="packets only"):
        lesson.assert_compiled(lesson.classify_table)
    assert not lesson.has_literal(lesson.source_of(classify), 22)
    assert lesson.has_literal("x == 0x16", 22) and lesson.has_literal("x == 22", 22)
    assert not lesson.has_literal("x == 221", 22)


def test_measure_returns_every_variant():
    rules = lesson.random_rules(3, seed=1)
    m = lesson.measure(rules, n=512, py_n=16)
    assert set(m) == {"table", "specialized", "table (Python)", "specialized (Python)"}
    assert all(v > 0 for v in m.values())
