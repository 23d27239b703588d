"""hoststated/passive.py (issue 15): NFLOG bytes recorded from a real run
in, sightings and decisions out; the kernel rules' text (kernel/nft.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hoststated import passive
from hoststated.conf.load import load_text
from hoststated.kernel import nft

DATA = Path(__file__).parent / "data" / "passive_nflog.txt"
RESETS, UNREACH = (bytes.fromhex(line) for line in DATA.read_text().splitlines()
                   if line and not line.startswith("#"))

CONF = """
table <web> { 198.51.100.11, 198.51.100.12 }
table <other> { 198.51.100.13 }
redirect www {
	listen on 203.0.113.50 port 80
	forward to <web> port 80 check tcp OPTS
}
redirect dns {
	listen on 203.0.113.50 udp port 9
	forward to <web> port 9 check icmp passive unreachables
}
redirect plain {
	listen on 203.0.113.51 port 80
	forward to <other> port 80 check tcp
}
"""


def config(opts: str = "passive"):
    return load_text(CONF.replace("OPTS", opts), "t.conf", lookup=False)


def regroup(data: bytes, group: int = passive.NFLOG_GROUP) -> bytes:
    """The recording was made on group 18516; the same bytes on another
    group (nfgenmsg.res_id of every packet message)."""
    out = bytearray(data)
    off = 0
    while off + 16 <= len(out):
        n, mtype = struct.unpack_from("=IH", out, off)
        if mtype == 0x0400:
            struct.pack_into(">H", out, off + 18, group)
        off += (n + 3) & ~3
    return bytes(out)


def test_the_recorded_resets_parse():
    got = passive.logged(RESETS)
    assert [(p.group, p.prefix, p.family) for p in got] == [(18516, "hsp r ", 2)] * 2
    s = [passive.sighting(p.payload) for p in got]
    assert s == [passive.Sighting("reset", "198.51.100.11", 80, "192.0.2.2")] * 2


def test_the_recorded_unreachable_names_the_quoted_port():
    (p,) = passive.logged(UNREACH)
    assert p.prefix == "hsp u "
    assert passive.sighting(p.payload) == passive.Sighting(
        "unreachable", "198.51.100.11", 9, "198.51.100.1")


def test_an_icmp_error_about_a_datagram_to_someone_else_is_no_sighting():
    (p,) = passive.logged(UNREACH)
    pkt = bytearray(p.payload)
    ihl = (pkt[0] & 15) * 4
    pkt[ihl + 8 + 16:ihl + 8 + 20] = bytes([198, 51, 100, 12])     # quoted destination
    assert passive.sighting(bytes(pkt)) is None


def test_every_truncation_of_the_recordings_parses_without_error():
    det = passive.Detector(config())
    for data in (RESETS, UNREACH):
        for n in range(len(data)):
            for p in passive.logged(data[:n]):
                passive.sighting(p.payload)
            det.datagram(regroup(data)[:n], float(n))


def test_three_resets_within_a_second_mark_the_host_down():
    det = passive.Detector(config())
    data = regroup(RESETS)
    assert det.datagram(data, 10.0) == []            # two resets
    (d,) = det.datagram(data, 10.5)                  # the third (and a fourth)
    assert d == passive.Decision(1, "down", "3 resets from host in 1 s")
    assert det.stats.events == 4 and det.stats.per_host == {1: 4}


def test_resets_further_apart_than_the_window_do_not_add_up():
    det = passive.Detector(config("passive limit 3 in 1"))
    data = regroup(RESETS)
    assert det.datagram(data, 10.0) == []
    assert det.datagram(data, 11.5) == []            # the first two are out of the window
    assert det.datagram(data, 11.9) != []


def test_another_group_or_an_unknown_source_counts_against_no_host():
    det = passive.Detector(config())
    assert det.datagram(RESETS, 1.0) == [] and det.datagram(RESETS, 1.1) == []
    assert det.stats.unattributed == 4 and det.stats.events == 0
    det = passive.Detector(load_text(CONF.replace("OPTS", "").replace(
        "check icmp passive unreachables", "check icmp"), "t.conf", lookup=False))
    assert not det.wanted
    det.datagram(regroup(RESETS), 1.0)
    assert det.stats.events == 0 and det.stats.unattributed == 2


def test_unreachables_count_where_the_table_counts_them():
    det = passive.Detector(config("passive resets"))
    data = regroup(UNREACH)
    for t in (1.0, 1.1):
        assert det.datagram(data, t) == []
    (d,) = det.datagram(data, 1.2)
    assert d.detail == "3 unreachables from host in 1 s"
    # the web:80 table counts resets only: a port-9 unreachable is another table's
    assert d.host_id == 3


def test_action_and_the_overrun_hold():
    det = passive.Detector(config("passive limit 1 action fail"))
    data = regroup(RESETS)
    assert det.datagram(data, 1.0)[0].action == "fail"
    det.overrun(2.0)
    assert det.stats.overruns == 1
    assert {d.action for d in det.datagram(data, 3.0)} == {"fast"}
    assert {d.action for d in det.datagram(data, 2.0 + passive.OVERRUN_HOLD + 1)} == {"fail"}


def test_events_over_the_rate_limit_are_dropped_and_counted():
    det = passive.Detector(config("passive limit 10000"))
    for _ in range(passive.RATE_MAX + 10):
        det.event(1, "reset", 5.5)
    assert det.stats.dropped == 10 and det.stats.events == passive.RATE_MAX
    det.event(1, "reset", 6.0)                       # the next second
    assert det.stats.events == passive.RATE_MAX + 1


def test_detail_names_mixed_kinds():
    assert passive.detail(["reset", "unreachable", "reset"], 2) == (
        "2 resets, 1 unreachable from host in 2 s")


def test_bind_requests_bind_the_group_with_packet_copies():
    reqs = passive.bind_requests(18515)
    last = list(passive.messages(reqs[-1]))
    assert len(last) == 1 and last[0][0] == 0x0401     # NFULNL_MSG_CONFIG
    body = last[0][2]
    assert body[2:4] == struct.pack(">H", 18515)
    a = passive.attrs(body, 4)
    assert a[passive.NFULA_CFG_CMD] == bytes([passive.NFULNL_CFG_CMD_BIND])
    assert a[passive.NFULA_CFG_MODE][:5] == struct.pack(">IB", passive.COPY_RANGE, 2)
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -16) + bytes(16)
    assert passive.ack_error(ack) == 16


def test_targets_are_the_hosts_of_passive_nat_tables_at_their_port():
    t = passive.targets(config())
    assert t == {("198.51.100.11", 80): (1,), ("198.51.100.12", 80): (2,),
                 ("198.51.100.11", 9): (3,), ("198.51.100.12", 9): (4,)}


def test_the_kernel_sets_follow_the_targets_and_render_back():
    el = nft.passive_elements(config())
    assert el["passive4"] == ("198.51.100.11 . 80", "198.51.100.11 . 9",
                              "198.51.100.12 . 80", "198.51.100.12 . 9")
    assert el["passive4a"] == ("198.51.100.11", "198.51.100.12")
    stmts = nft.render_passive(el)
    assert any("ct direction reply ct status dnat jump passive_log" in s for s in stmts)
    assert sum("fib saddr . iif oif exists" in s and f"group {passive.NFLOG_GROUP}" in s
               for s in stmts) == 4
    # nothing passive: the objects are removed
    gone = nft.render_passive({k: () for k in nft.PASSIVE_SETS})
    assert "delete chain inet hoststated passive_log" in gone


def test_engine_ipvs_nat_hosts_are_targets_with_rules_of_their_own():
    c = load_text("engine ipvs\n" + CONF.replace("OPTS", "passive"), "t.conf", lookup=False)
    assert passive.targets(c) == passive.targets(config())
    # the nftables engine's rules do not cover them; IPVS's table does
    assert not any(nft.passive_elements(c).values())
    el = nft.passive_elements(c, nft.IPVS_PASSIVE)
    assert el == nft.passive_elements(config())
    stmts = nft.render_passive(el, nft.IPVS_PASSIVE)
    assert all("inet hoststated_ipvs" in s for s in stmts)
    # IPVS keeps conntrack out: no ct condition, and no input chain (hce's
    # own checks' replies pass there); the reverse path guards
    assert not any("ct " in s or "hook input" in s or "passive_in" in s for s in stmts)
    assert "add rule inet hoststated_ipvs passive_fwd jump passive_log" in stmts
    assert sum("fib saddr . iif oif exists" in s for s in stmts) == 4
    # what the kernel lists back for such a table reads as what was written
    objs = ([{"chain": {"name": c}} for c in nft.IPVS_PASSIVE.chains]
            + [{"rule": {"chain": "passive_fwd"}}] + [{"rule": {"chain": "passive_log"}}] * 4
            + [{"set": {"name": n, "elem": [{"concat": e.split(" . ")} if " . " in e else e
                                            for e in el[n]]}} for n in nft.PASSIVE_SETS])
    assert nft.parse_passive(objs, nft.IPVS_PASSIVE) == el
    assert nft.parse_passive(objs) == {}        # not the nftables engine's layout


@pytest.mark.parametrize("objs, want", [
    ([], None),
    ([{"chain": {"name": "passive_log"}}], {}),
])
def test_parse_passive_reads_absence_and_partial_layouts(objs, want):
    assert nft.parse_passive(objs) == want


def test_passive_down_takes_up_or_unknown_hosts_down_without_counting_a_check():
    from hoststated.hce_state import HostState, passive_down
    from hoststated.states import HostStatus as S
    up = HostState(S.UP, 0, 1, 7, 7)
    assert passive_down(up) == HostState(S.DOWN, 0, 0, 7, 7)
    assert passive_down(HostState()).status == S.DOWN
    for s in (HostState(S.DOWN, 1, 0, 3, 1), HostState(S.DISABLED)):
        assert passive_down(s) is s
