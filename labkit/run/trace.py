"""Packet trace: the first packets' path through the graph, VPP-style.

For each packet, each node it visits: the header fields that node reads, the
fields it changed (before -> after), and where the packet went next. Runs the
nodes' pure-Python twins on a private copy of the frame, so tracing never
disturbs a run and shows exactly the reference semantics.
"""
import ipaddress

import numpy as np

from ..graph.compile import DROP_T, TX_T
from ..memory import layouts as L
from ..memory.bytes import rd16, rd32, rd32le


def _mac(a, o):
    return ":".join(f"{int(b):02x}" for b in a[o:o + 6])


def decode(arena, base, length):
    """The header fields a trace can show, as strings, for what the frame holds."""
    f = base + L.DATA_OFF
    out = {"meta.adj_index": str(rd32le(arena, base + L.META_ADJ_OFF))}
    if length < L.ETH_HDR.itemsize:
        return out
    out["eth.dst"] = _mac(arena, f + L.ETH_DST_OFF)
    out["eth.src"] = _mac(arena, f + L.ETH_SRC_OFF)
    etype = rd16(arena, f + L.ETH_TYPE_OFF)
    out["eth.type"] = f"0x{etype:04x}"
    ip = f + L.IP4_OFF
    if etype != L.ETHERTYPE_IPV4 or length < L.IP4_OFF + L.IP4_HDR.itemsize:
        return out
    out["ip4.ver_ihl"] = f"0x{int(arena[ip]):02x}"
    out["ip4.total_length"] = str(rd16(arena, ip + L.IP4_LEN_OFF))
    out["ip4.ttl"] = str(int(arena[ip + L.IP4_TTL_OFF]))
    proto = int(arena[ip + L.IP4_PROTO_OFF])
    out["ip4.proto"] = str(proto)
    out["ip4.checksum"] = f"0x{rd16(arena, ip + L.IP4_CSUM_OFF):04x}"
    out["ip4.src"] = str(ipaddress.IPv4Address(rd32(arena, ip + L.IP4_SRC_OFF)))
    out["ip4.dst"] = str(ipaddress.IPv4Address(rd32(arena, ip + L.IP4_DST_OFF)))
    l4 = ip + 4 * (int(arena[ip]) & 0xF)
    if proto in (L.IPPROTO_TCP, L.IPPROTO_UDP) and l4 + 4 <= f + length:
        out["l4.sport"] = str(rd16(arena, l4 + L.L4_SPORT_OFF))
        out["l4.dport"] = str(rd16(arena, l4 + L.L4_DPORT_OFF))
    return out


def trace(graph, tables, traffic, max_frame, n):
    """A list of n traces; each a list of steps (dicts: node, read, changed, result)."""
    traces = []
    slot = L.DATA_OFF + max(max_frame, traffic.stride)
    arena = np.zeros(slot, np.uint8)
    for p in range(n):
        t = int(traffic.seq[p % traffic.seq.size])
        length = int(traffic.lengths[t])
        steps = []
        if length > max_frame or length > traffic.stride:
            steps.append({"node": "rx", "read": {"length": str(length)}, "changed": {},
                          "result": "drop: rx_frame_too_long"})
            traces.append(steps)
            continue
        arena[:] = 0
        arena[L.DATA_OFF:L.DATA_OFF + length] = traffic.frames[t, :length]
        i = 0
        while True:
            node = graph.nodes[i]
            before = decode(arena, 0, length)
            code = node.one.py_func(arena, 0, length, *(tables[name] for name in node.tables))
            after = decode(arena, 0, length)
            step = {"node": node.name,
                    "read": {k: before[k] for k in node.reads if k in before},
                    "changed": {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}}
            steps.append(step)
            if code < 0:
                step["result"] = "drop: " + node.errors[-code - 1][0]
                break
            target = graph.arcs[i][code]
            if target == TX_T:
                step["result"] = "tx"
                break
            if target == DROP_T:
                step["result"] = "drop"
                break
            step["result"] = graph.nodes[target].name
            i = target
        traces.append(steps)
    return traces
