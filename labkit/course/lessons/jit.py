"""Exercise 11 (JIT compilation): runtime specialization of a packet classifier.

A classifier decides, for each packet, the action of the FIRST rule that
matches it, or a default action when none does. A rule is

    Rule(net, plen, proto, dport_lo, dport_hi, action)

- ``net``/``plen``: the destination IPv4 prefix (``net`` an int, its host bits
  zero; ``plen`` 0..32; 0 matches any destination);
- ``proto``: the IP protocol (6 TCP, 17 UDP, ...); 0 matches any;
- ``dport_lo``..``dport_hi``: the destination port range, both ends inclusive
  (0..65535 matches any);
- ``action``: a small int (``PERMIT`` 0, ``DENY`` 1, or e.g. a queue number).

Packets are three arrays of one length (structure of arrays): ``dst`` (uint32),
``proto`` (uint8), ``dport`` (uint16); verdicts go to ``out`` (uint8).

Two ways to run the same rules, both compiled with numba:

- **interpreted**: ``classify_table(table, default, dst, proto, dport, out)``,
  a generic loop that reads every rule from a table (``rule_table(rules)``) for
  every packet, as labkit's ``acl`` node does (``labkit.graph.kernels.acl_one``);
- **specialized**: ``specialize(rules, default)`` generates the Python source
  of ``classify(dst, proto, dport, out)`` with the rules written into it as
  constants (one ``if``/``elif`` per rule; a wildcard field generates no test
  at all; a rule that matches everything ends the chain), and compiles it.
  The compiler then sees every mask, port and protocol as a literal:
  constants fold, tests of wildcards vanish, and nothing is loaded from a
  table. That is what a JIT can do and an ahead-of-time compiler cannot: the
  rules are only known at run time. eBPF's JIT, P4 compilers and PacketMill
  do this to whole programs.

``compile_source`` loads generated source from a file (so ``inspect`` and a
student can read it, as for labkit's generated graph loops), ``reference``
is the pure-Python first-match classifier every variant is checked against,
``random_rules``/``packets_for`` make the inputs, ``edge_cases`` the rule sets
and packets where a first-match classifier is easy to get wrong, and
``time_classifier``/``measure`` give TSC cycles per packet.
"""
import inspect
import time
from collections import namedtuple

import numpy as np
from numba import njit
from numba.core.registry import CPUDispatcher

from labkit.course import exercise as ex

PERMIT, DENY = 0, 1
ANY_PORTS = (0, 0xFFFF)
PARAMS = ("dst", "proto", "dport", "out")       # what a specialized classify takes: packets only

Rule = namedtuple("Rule", "net plen proto dport_lo dport_hi action")
Rule.__doc__ = """One rule: destination prefix net/plen (plen 0 = any), proto (0 = any),
dport_lo..dport_hi inclusive, action. The first rule that matches decides."""

# columns of rule_table()
T_NET, T_MASK, T_PROTO, T_LO, T_HI, T_ACTION = range(6)
T_COLS = 6


def mask_of(plen):
    """The netmask of a prefix length, as an int: 24 -> 0xFFFFFF00, 0 -> 0."""
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def rule(net="0.0.0.0/0", proto=0, dport=ANY_PORTS, action=DENY):
    """A Rule from readable fields: rule("10.0.0.0/8", 17, 53, PERMIT);
    dport is a port, a (lo, hi) range or "any"."""
    import ipaddress
    n = ipaddress.IPv4Network(net, strict=True)
    lo, hi = ANY_PORTS if dport == "any" else (dport, dport) if isinstance(dport, int) else dport
    return validate(Rule(int(n.network_address), n.prefixlen, proto, lo, hi, action))


def validate(r):
    """r as a Rule of ints, or ValueError saying which field is wrong."""
    r = Rule(*(int(x) for x in r))
    if not 0 <= r.plen <= 32:
        raise ValueError(f"{r}: plen must be 0..32")
    if not 0 <= r.net <= 0xFFFFFFFF or r.net & ~mask_of(r.plen) & 0xFFFFFFFF:
        raise ValueError(f"{r}: net must be a 32-bit address with its host bits (past plen) zero")
    if not 0 <= r.proto <= 255:
        raise ValueError(f"{r}: proto must be 0 (any) to 255")
    if not 0 <= r.dport_lo <= r.dport_hi <= 0xFFFF:
        raise ValueError(f"{r}: need 0 <= dport_lo <= dport_hi <= 65535")
    if not 0 <= r.action <= 255:
        raise ValueError(f"{r}: action must fit in a byte (0..255)")
    return r


# ---- the reference: pure Python, one packet at a time ------------------------------

def matches(r, dst, proto, dport):
    """Does rule r match this packet? (Python ints.)"""
    return ((dst & mask_of(r.plen)) == r.net and (r.proto == 0 or r.proto == proto)
            and r.dport_lo <= dport <= r.dport_hi)


def reference(rules, default, dst, proto, dport):
    """The verdicts (uint8 array) of a first-match classifier: each packet gets the
    action of the first rule that matches it, ``default`` when none does."""
    rules = [validate(r) for r in rules]
    out = np.empty(len(dst), np.uint8)
    for i, (d, p, q) in enumerate(zip(np.asarray(dst).tolist(), np.asarray(proto).tolist(),
                                      np.asarray(dport).tolist())):
        out[i] = next((r.action for r in rules if matches(r, d, p, q)), default)
    return out


# ---- interpreted: the rules as data --------------------------------------------------

def rule_table(rules):
    """The rules as an int64 [n, 6] table (columns T_NET, T_MASK, T_PROTO, T_LO,
    T_HI, T_ACTION): what a generic classifier reads for every packet."""
    t = np.zeros((len(rules), T_COLS), np.int64)
    for i, r in enumerate(rules):
        r = validate(r)
        t[i] = (r.net, mask_of(r.plen), r.proto, r.dport_lo, r.dport_hi, r.action)
    return t


@njit(nogil=True, cache=True)
def classify_table(table, default, dst, proto, dport, out):
    """Generic first-match classifier: for every packet, walk the rule table
    until a rule matches. Every field of every rule is a load and a compare,
    wildcards included: the code cannot know which fields are wildcards."""
    for i in range(dst.size):
        d = np.int64(dst[i])
        p = np.int64(proto[i])
        q = np.int64(dport[i])
        a = default
        for r in range(table.shape[0]):
            if ((d & table[r, T_MASK]) == table[r, T_NET] and (table[r, T_PROTO] == 0 or table[r, T_PROTO] == p)
                    and table[r, T_LO] <= q and q <= table[r, T_HI]):
                a = table[r, T_ACTION]
                break
        out[i] = a


# ---- specialized: the rules as code ----------------------------------------------------

def condition(r):
    """The test of one rule as a Python expression over d (dst), p (proto) and
    q (dport), with its values as literals; "" when the rule matches everything.
    A wildcard field generates no test; a /32 or a single port an equality."""
    r = validate(r)
    tests = []
    if r.plen == 32:
        tests.append(f"d == {r.net:#010x}")
    elif r.plen:
        tests.append(f"(d & {mask_of(r.plen):#010x}) == {r.net:#010x}")
    if r.proto:
        tests.append(f"p == {r.proto}")
    if (r.dport_lo, r.dport_hi) != ANY_PORTS:
        if r.dport_lo == r.dport_hi:
            tests.append(f"q == {r.dport_lo}")
        elif r.dport_lo == 0:
            tests.append(f"q <= {r.dport_hi}")
        elif r.dport_hi == 0xFFFF:
            tests.append(f"q >= {r.dport_lo}")
        else:
            tests.append(f"{r.dport_lo} <= q <= {r.dport_hi}")
    return " and ".join(tests)


def classifier_source(rules, default=PERMIT):
    """Python source of ``classify(dst, proto, dport, out)`` with the rules as
    constants: an if/elif chain in rule order (first match wins), the default
    in the final else; nothing after a rule that matches everything."""
    lines = [f'"""Generated by labkit.course.lessons.jit.classifier_source: {len(rules)} rule(s), default {default}."""',
             "import numpy as np", "", "",
             "def classify(dst, proto, dport, out):",
             "    for i in range(dst.size):",
             "        d = np.int64(dst[i])",
             "        p = np.int64(proto[i])",
             "        q = np.int64(dport[i])"]
    kw = "if"
    for r in rules:
        r = validate(r)
        cond = condition(r)
        if not cond:                               # matches everything: the chain ends here
            lines += ["        else:" if kw == "elif" else "        if True:", f"            out[i] = {r.action}"]
            return "\n".join(lines) + "\n"
        lines += [f"        {kw} {cond}:", f"            out[i] = {r.action}"]
        kw = "elif"
    if kw == "if":                                  # no rules: everything gets the default
        lines.append(f"        out[i] = {int(default)}")
    else:
        lines += ["        else:", f"            out[i] = {int(default)}"]
    return "\n".join(lines) + "\n"


def compile_source(source, name="classify"):
    """Load ``source`` as a module, the way labkit loads its generated graph
    loops (``labkit.graph.compile.load_source``: a file named after its hash,
    so ``inspect.getsource(fn.py_func)`` finds the generated code), and return
    its function ``name`` compiled with numba (``njit(nogil=True)``). Compiling
    happens at the first call (numba compiles per argument types)."""
    from labkit.graph.compile import load_source
    fn = getattr(load_source(source, "classifier"), name, None)
    if fn is None:
        raise ValueError(f"the source defines no function {name!r}")
    return njit(nogil=True)(fn)


def specialize(rules, default=PERMIT):
    """The reference specializer: ``classify(dst, proto, dport, out)``, compiled,
    with these rules baked in (``classifier_source``)."""
    return compile_source(classifier_source(rules, default))


# ---- what the checks look at ---------------------------------------------------------------

def is_compiled(fn):
    """True for a numba-compiled function (a dispatcher made by njit)."""
    return isinstance(fn, CPUDispatcher)


def source_of(fn):
    """The Python source of a compiled function (its py_func), or "" when there is none."""
    try:
        return inspect.getsource(getattr(fn, "py_func", fn))
    except (OSError, TypeError):
        return ""


def params_of(fn):
    return tuple(inspect.signature(getattr(fn, "py_func", fn)).parameters)


def literals(r):
    """The numbers a specialized classifier's source must contain for rule r
    (each in decimal or hex): its non-wildcard fields and its action."""
    r = validate(r)
    out = []
    if r.plen:
        out.append(r.net)
    if r.proto:
        out.append(r.proto)
    if (r.dport_lo, r.dport_hi) != ANY_PORTS:
        out += [x for x in (r.dport_lo, r.dport_hi) if x not in (0, 0xFFFF)]
    return out


def has_literal(source, value):
    """Is the int ``value`` written in ``source`` (decimal or hex, any case or width)?"""
    import re
    for tok in re.findall(r"\b(?:0[xX][0-9a-fA-F]+|\d+)\b", source):
        if int(tok, 0) == value:
            return True
    return False


def assert_compiled(fn, what="specialize(rules)"):
    assert fn is not None, f"{what} returned None: return the compiled classify"
    assert is_compiled(fn), (f"{what} returned {type(fn).__name__} {getattr(fn, '__name__', '')!r}, not a "
                             "numba-compiled function: generate the source of classify(dst, proto, dport, out) "
                             "and compile it (lesson.compile_source(source) does both)")
    ps = params_of(fn)
    assert ps == PARAMS, (f"classify takes {ps}; a specialized classifier takes the packets only, {PARAMS}: "
                          "the rules are in its code, not in an argument")


def verdicts(fn, dst, proto, dport):
    """fn's verdicts for these packets (fn: a classify(dst, proto, dport, out))."""
    out = np.full(len(dst), 0xEE, np.uint8)         # 0xEE: "never written"
    fn(dst, proto, dport, out)
    return out


# ---- inputs ---------------------------------------------------------------------------------

def make_packets(dst, proto, dport):
    """Three arrays of the classifier's dtypes from Python sequences."""
    return (np.asarray(dst, np.uint32), np.asarray(proto, np.uint8), np.asarray(dport, np.uint16))


def random_rules(n, seed=1, actions=(PERMIT, DENY)):
    """n rules like a firewall's: prefixes /8 to /32, TCP/UDP/any, single ports,
    ranges and any ports. No rule matches everything or a whole protocol, so a
    packet that matches none (most random ones) is tried against all n."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        plen = int(rng.choice([8, 16, 24, 32], p=[0.1, 0.3, 0.4, 0.2]))
        net = int(rng.integers(0, 1 << 32)) & mask_of(plen)
        proto = int(rng.choice([0, 6, 17], p=[0.2, 0.4, 0.4]))
        kind = rng.random()
        if kind < 0.5:
            lo = hi = int(rng.integers(1, 1 << 16))
        elif kind < 0.8:
            lo = int(rng.integers(0, 1 << 16))
            hi = int(rng.integers(lo, min(lo + 2000, 0xFFFF) + 1))
        else:
            lo, hi = ANY_PORTS
        out.append(Rule(net, plen, proto, lo, hi, int(rng.choice(actions))))
    return out


def packets_for(rules, n, seed=2, hit=0.5):
    """n packets: a share ``hit`` drawn to match some rule (a random one of the
    rules; an earlier rule may match first), the rest random (most match no
    rule, so a first-match classifier tries every rule for them)."""
    rng = np.random.default_rng(seed)
    dst = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    proto = rng.choice(np.array([6, 17, 1], np.uint8), n)
    dport = rng.integers(0, 1 << 16, n).astype(np.uint16)
    if rules:
        for i in np.flatnonzero(rng.random(n) < hit):
            r = rules[int(rng.integers(0, len(rules)))]
            host = int(rng.integers(0, 1 << 32)) & ~mask_of(r.plen) & 0xFFFFFFFF
            dst[i] = r.net | host
            if r.proto:
                proto[i] = r.proto
            dport[i] = int(rng.integers(r.dport_lo, r.dport_hi + 1))
    return dst, proto, dport


def edge_cases():
    """[(name, rules, default, (dst, proto, dport))]: rule sets and packets on
    the edges a first-match classifier must get right."""
    a = 0x0A000000                                   # 10.0.0.0
    cases = []
    # an empty rule list: everything gets the default, whatever it is
    pk = make_packets([0, a, 0xFFFFFFFF], [6, 17, 1], [0, 53, 65535])
    cases.append(("no rules, default permit", [], PERMIT, pk))
    cases.append(("no rules, default 7", [], 7, pk))
    # port range bounds are inclusive: lo-1, lo, hi, hi+1
    rs = [Rule(0, 0, 6, 135, 139, DENY)]
    cases.append(("port range bounds", rs, PERMIT, make_packets([1] * 6, [6] * 6, [134, 135, 137, 139, 140, 0])))
    rs = [Rule(0, 0, 17, 0, 0, 5), Rule(0, 0, 17, 65535, 65535, 6), Rule(0, 0, 17, 0, 1023, 3)]
    cases.append(("ports 0 and 65535", rs, 9, make_packets([1] * 5, [17] * 5, [0, 65535, 1, 1023, 1024])))
    # first match wins, even when a later rule is more specific
    rs = [Rule(a, 8, 0, *ANY_PORTS, PERMIT), Rule(a | 0x0102, 32, 17, 53, 53, DENY), Rule(0, 0, 17, 53, 53, 4)]
    cases.append(("first match wins", rs, 2, make_packets([a | 0x0102, a | 0x0102, 0x0B000102, 0x0B000102],
                                                          [17, 6, 17, 6], [53, 53, 53, 80])))
    # prefix bounds: the first and last address of a /24, one below and one above; a /32
    n24 = 0xC0A80100                                 # 192.168.1.0/24
    rs = [Rule(n24, 24, 0, *ANY_PORTS, DENY), Rule(0x08080808, 32, 0, *ANY_PORTS, 3)]
    cases.append(("prefix bounds", rs, PERMIT, make_packets(
        [n24 - 1, n24, n24 | 0xFF, n24 + 0x100, 0x08080808, 0x08080809, 0x08080807], [6] * 7, [80] * 7)))
    # proto 0 is any protocol; a rule with a protocol matches only it
    rs = [Rule(0, 0, 17, 1000, 2000, 1), Rule(0, 0, 0, 1000, 2000, 2)]
    cases.append(("protocol wildcard", rs, PERMIT, make_packets([5] * 4, [17, 6, 1, 47], [1500] * 4)))
    # a catch-all rule: rules after it can never match, the default is never used
    rs = [Rule(0, 0, 6, 22, 22, PERMIT), Rule(0, 0, 0, *ANY_PORTS, DENY), Rule(0, 0, 17, 53, 53, PERMIT)]
    cases.append(("catch-all rule", rs, 7, make_packets([1, 1, 1, 1], [6, 6, 17, 1], [22, 23, 53, 0])))
    # a high address: its top bit set (a signed 32-bit compare would get it wrong)
    rs = [Rule(0xF0000000, 4, 0, *ANY_PORTS, 8)]
    cases.append(("high addresses", rs, PERMIT, make_packets([0xF0000001, 0xFFFFFFFF, 0xEFFFFFFF], [6] * 3, [1] * 3)))
    return cases


# ---- timing ----------------------------------------------------------------------------------

def time_classifier(call, n_packets, rounds=None):
    """TSC cycles per packet of ``call()`` (which classifies n_packets packets):
    the fastest of ``rounds`` calls, after one call to compile and warm up."""
    rounds = rounds or (3 if ex.quick() else 15)
    call()
    best = None
    for _ in range(rounds):
        t0 = ex.now_tsc()
        call()
        dt = ex.now_tsc() - t0
        best = dt if best is None else min(best, dt)
    return best / n_packets


def measure(rules, fn=None, n=None, py_n=None, seed=2, default=PERMIT, python=True):
    """TSC cycles per packet for these rules, side by side:
    {"table": the generic compiled loop over the rule table, "specialized": fn
    (default: the reference specializer's classifier), and with python=True
    "table (Python)" and "specialized (Python)": the same two interpreted by
    CPython (their py_func), on py_n packets only (about 3000x slower)}."""
    n = n or (4096 if ex.quick() else 65536)
    py_n = py_n or (64 if ex.quick() else 500)
    fn = fn or specialize(rules, default)
    table = rule_table(rules)
    dst, proto, dport = packets_for(rules, n, seed=seed)
    out = np.zeros(n, np.uint8)
    res = {"table": time_classifier(lambda: classify_table(table, default, dst, proto, dport, out), n),
           "specialized": time_classifier(lambda: fn(dst, proto, dport, out), n)}
    if python:
        d, p, q, o = dst[:py_n], proto[:py_n], dport[:py_n], out[:py_n]
        res["table (Python)"] = time_classifier(lambda: classify_table.py_func(table, default, d, p, q, o),
                                                py_n, rounds=1 if ex.quick() else 3)
        res["specialized (Python)"] = time_classifier(lambda: fn.py_func(d, p, q, o), py_n,
                                                      rounds=1 if ex.quick() else 3)
    return res


def compile_seconds(fn, *args):
    """Seconds numba takes to compile fn for these arguments (its first call)."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0
