"""A first-match 5-tuple ACL, written as readable rules, compiled to uint32.

A rule is a dict; every key but ``action`` may be left out (= any)::

    {"action": "deny", "src": "10.0.0.0/8", "dst": "any", "proto": "udp",
     "sport": (0, 65535), "dport": 53}

- ``src`` / ``dst``: "a.b.c.d/len", "a.b.c.d" (a /32) or "any";
- ``proto``: "tcp", "udp", "icmp", "any" or an IP protocol number (0 = any);
- ``sport`` / ``dport``: a port, a (lo, hi) inclusive range, or "any";
- ``action``: "permit" or "deny".

Rules are tried in order, the first that matches decides; a packet no rule
matches is permitted (default permit: the rule set is a blacklist; end it with
a catch-all deny to make it a whitelist). Ports are 0 for protocols other than
TCP/UDP and for non-first fragments, so a port range not containing 0 never
matches them.

Compiled form (the ``acl_rules`` table of the acl node): uint32 [n_rules, 10],
columns ``src, src_mask, dst, dst_mask, proto, sport_lo, sport_hi, dport_lo,
dport_hi, action`` (action 0 = permit, 1 = deny; addresses already masked) --
the ``ACL_*`` constants of ``labkit.graph.kernels``.
"""
import ipaddress

import numpy as np

from labkit.graph.kernels import ACL_COLS, ACL_DENY, ACL_PERMIT

PROTOS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}
ACTIONS = {"permit": ACL_PERMIT, "deny": ACL_DENY}


def _net(s):
    if s == "any":
        return 0, 0
    n = ipaddress.IPv4Network(s, strict=False)
    return int(n.network_address), int(n.netmask)


def _ports(p):
    if p == "any":
        return 0, 0xFFFF
    lo, hi = (p, p) if isinstance(p, int) else p
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"bad port range {p!r}")
    return lo, hi


def compile_rule(rule):
    """One rule dict -> the 10 uint32 columns."""
    unknown = set(rule) - {"action", "src", "dst", "proto", "sport", "dport"}
    if unknown or rule.get("action") not in ACTIONS:
        raise ValueError(f"bad ACL rule {rule!r}")
    proto = rule.get("proto", "any")
    proto = PROTOS[proto] if isinstance(proto, str) else int(proto)
    return (*_net(rule.get("src", "any")), *_net(rule.get("dst", "any")), proto,
            *_ports(rule.get("sport", "any")), *_ports(rule.get("dport", "any")),
            ACTIONS[rule["action"]])


class Acl:
    """Rules in order; ``self.rules`` is the compiled uint32 [n, 10] table."""

    def __init__(self, rules):
        self.source = list(rules)
        self.rules = np.array([compile_rule(r) for r in self.source], np.uint32).reshape(-1, ACL_COLS)

    def match(self, src, dst, proto, sport, dport):
        """Index of the first matching rule, or -1 (pure-Python reference)."""
        for i, r in enumerate(self.rules.tolist()):
            if ((src & r[1]) == r[0] and (dst & r[3]) == r[2] and r[4] in (0, proto)
                    and r[5] <= sport <= r[6] and r[7] <= dport <= r[8]):
                return i
        return -1

    def permits(self, src, dst, proto, sport, dport):
        i = self.match(src, dst, proto, sport, dport)
        return i < 0 or self.rules[i, 9] == ACL_PERMIT

    @classmethod
    def default(cls):
        """An edge firewall in front of the random FIB's address space
        (1.0.0.0-223.255.255.255): anti-spoofing of bogon sources, a DNS
        service only for the inside network 10/8, no telnet/SMB/RPC, no
        UDP amplification vectors, and two blocked destination blocks."""
        return cls(DEFAULT_RULES)


DEFAULT_RULES = [
    # inside hosts may use DNS and NTP anywhere
    {"action": "permit", "src": "10.0.0.0/8", "proto": "udp", "dport": 53},
    {"action": "permit", "src": "10.0.0.0/8", "proto": "udp", "dport": 123},
    # bogon sources: never legitimate on the wire (RFC 6890)
    {"action": "deny", "src": "0.0.0.0/8"},
    {"action": "deny", "src": "127.0.0.0/8"},
    {"action": "deny", "src": "169.254.0.0/16"},
    {"action": "deny", "src": "224.0.0.0/3"},
    {"action": "deny", "src": "100.64.0.0/10"},
    # DNS from anyone else: open-resolver abuse
    {"action": "deny", "proto": "udp", "dport": 53},
    {"action": "deny", "proto": "tcp", "dport": 53},
    # cleartext and LAN-only services
    {"action": "deny", "proto": "tcp", "dport": 23},
    {"action": "deny", "proto": "tcp", "dport": (135, 139)},
    {"action": "deny", "proto": "udp", "dport": (137, 139)},
    {"action": "deny", "proto": "tcp", "dport": 445},
    # UDP amplification: SSDP, memcached, chargen
    {"action": "deny", "proto": "udp", "dport": 1900},
    {"action": "deny", "proto": "udp", "dport": 11211},
    {"action": "deny", "proto": "udp", "sport": 19},
    # web to a blocked destination block is allowed, anything else to it is not
    {"action": "permit", "dst": "45.0.0.0/8", "proto": "tcp", "dport": 443},
    {"action": "deny", "dst": "45.0.0.0/8"},
    {"action": "deny", "dst": "185.0.0.0/8"},
    # unsolicited high-port UDP towards 192/8 (a game-server DDoS target)
    {"action": "deny", "dst": "192.0.0.0/8", "proto": "udp", "dport": (1024, 65535)},
]
