"""Whole-file flows (no timeouts) count the same packets per direction as nDPI does.

nDPI's flow = every packet with the same (VLAN, L4 proto, unordered endpoint pair)
over the whole file, tunnels decapsulated; its src is the side it saw first. We
match each task flow to ours by endpoints, so orientation does not matter.
"""
from __future__ import annotations

import csv
from collections import defaultdict

from trafficsnn.flows import flows_from_capture
from trafficsnn.packets.batch import ip_to_words

L4 = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "IGMP": 2, "ESP": 50, "AH": 51, "SCTP": 132, "GRE": 47}


def _l4(name: str) -> int | None:
    return L4.get(name) if not name.isdigit() else int(name)


def test_per_direction_counts_match_ndpi(ndpi_dev):
    with open(ndpi_dev / "task.csv", newline="") as fh:
        task = list(csv.DictReader(fh))
    with open(ndpi_dev / "flows.csv", newline="") as fh:
        counts = {(r["pcap"], r["flow_idx"]): r for r in csv.DictReader(fh) if r["section"] == "detected"}
    by_pcap = defaultdict(list)
    for r in task:
        by_pcap[r["pcap"]].append(r)

    ok, bad = 0, []
    for pcap, rows in sorted(by_pcap.items()):
        ours: dict = defaultdict(list)
        for f in flows_from_capture(ndpi_dev / "pcap" / pcap, idle_timeout=None, active_timeout=None,
                                    tcp_close=False, max_flows=None, errors=[]):
            k = f.key
            c = (k.client_hi, k.client_lo, k.client_port)
            s = (k.server_hi, k.server_lo, k.server_port)
            ours[(k.proto, frozenset((c, s)))].append((c, f.c2s_pkts, f.s2c_pkts))
        for r in rows:
            want = counts[(pcap, r["flow_idx"])]
            src = ip_to_words(r["src_ip"]) + (int(r["src_port"] or 0),)
            dst = ip_to_words(r["dst_ip"]) + (int(r["dst_port"] or 0),)
            exp = (int(want["c2s_pkts"]), int(want["s2c_pkts"]))
            got = [(a, b) if c == src else (b, a) for c, a, b in ours.get((_l4(r["l4"]), frozenset((src, dst))), [])]
            if exp in got:
                ok += 1
            else:
                bad.append(f"{pcap} #{r['flow_idx']} {r['l4']} {r['src_ip']}:{r['src_port']} -> "
                           f"{r['dst_ip']}:{r['dst_port']}: nDPI c2s/s2c {exp}, ours {got or 'no flow'}")
    rate = ok / len(task)
    print(f"\nnDPI per-direction counts: {ok}/{len(task)} task flows match ({rate:.1%})")
    for line in bad:
        print("  mismatch:", line)
    assert rate >= 0.98
