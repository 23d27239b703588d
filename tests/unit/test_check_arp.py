"""check arp (migrate, issue 14): the ARP request frame, the replies that do
and do not answer a probe (on bytes, no socket), and the configuration:
what `check arp` refuses, how it prints back, where its interface comes from."""

from __future__ import annotations

import struct

import pytest

from hoststated.checks import arp, make_check
from hoststated.checks.base import Target
from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load_text
from hoststated.conf.printconf import print_config

MAC = "02:00:5e:10:00:01"
HOST_MAC = "02:00:5e:10:00:02"
CHECK = arp.ArpCheck(address="192.0.2.20", ifname="arpd0", mac=MAC, source="192.0.2.1")


def reply(sender_ip="192.0.2.20", sender_mac=HOST_MAC, target_ip="192.0.2.1",
          target_mac=MAC, op=arp.ARPOP_REPLY, ethertype=arp.ETH_P_ARP) -> bytes:
    def ip(a):
        return bytes(int(x) for x in a.split("."))
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, arp.mac_bytes(sender_mac),
                       ip(sender_ip), arp.mac_bytes(target_mac), ip(target_ip))
    return (arp.mac_bytes(target_mac) + arp.mac_bytes(sender_mac)
            + struct.pack("!H", ethertype) + body + b"\x00" * 18)


def test_request_frame_bytes():
    f = arp.request_frame(MAC, "192.0.2.1", "192.0.2.20")
    assert len(f) == 60
    assert f[:6] == b"\xff" * 6                          # broadcast
    assert f[6:12] == bytes.fromhex("02005e100001")      # from our MAC
    assert f[12:14] == b"\x08\x06"                       # ARP
    assert f[14:22] == bytes.fromhex("0001" "0800" "06" "04" "0001")   # Ethernet/IPv4, request
    assert f[22:28] == bytes.fromhex("02005e100001")     # sender MAC
    assert f[28:32] == bytes([192, 0, 2, 1])             # sender IP
    assert f[32:38] == b"\x00" * 6                       # target MAC: unknown
    assert f[38:42] == bytes([192, 0, 2, 20])            # who has 192.0.2.20
    assert f[42:] == b"\x00" * 18                        # padding
    # our own request is no reply
    assert arp.parse_reply(f) is None


def test_parse_reply():
    r = arp.parse_reply(reply())
    assert r == arp.Reply("192.0.2.20", HOST_MAC, "192.0.2.1", MAC)
    for bad in (reply()[:41], reply(op=arp.ARPOP_REQUEST), reply(ethertype=0x0800), b""):
        assert arp.parse_reply(bad) is None


def test_pending_matches_only_the_answer_to_our_probe():
    p = arp.Pending()
    p.add(CHECK, "t1")
    other = arp.ArpCheck(address="192.0.2.21", ifname="arpd0", mac=MAC, source="192.0.2.1")
    p.add(other, "t2")
    assert len(p) == 2
    # another interface, another host, a reply to someone else's request,
    # a request from the host: none of them answers
    assert p.match("arpd1", reply()) == []
    assert p.match("arpd0", reply(sender_ip="192.0.2.22")) == []
    assert p.match("arpd0", reply(target_ip="192.0.2.9")) == []
    assert p.match("arpd0", reply(target_mac="02:00:5e:10:00:09")) == []
    assert p.match("arpd0", reply(op=arp.ARPOP_REQUEST)) == []
    assert len(p) == 2
    assert p.match("arpd0", reply()) == ["t1"]
    assert p.match("arpd0", reply()) == []               # answered once
    assert len(p) == 1
    p.discard(other, "t2")
    assert len(p) == 0 and p.waiting == {}


def test_make_check_needs_the_link():
    t = Target(address="192.0.2.20", link=("arpd0", MAC, "192.0.2.1"))
    assert make_check(load_text(CONF.format(check="check arp"), lookup=False)
                      .tables[0].check, t) == CHECK
    with pytest.raises(ValueError, match="no interface"):
        make_check(load_text(CONF.format(check="check arp"), lookup=False).tables[0].check,
                   Target(address="192.0.2.20"))


# --- the configuration ---------------------------------------------------

CONF = """engine none
table <lan> {{ 192.0.2.20 }}
redirect "www" {{
	listen on 203.0.113.1 port 80
	forward to <lan> port 80 {check}
}}
"""


def errors(text: str, lookup: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_text(text, "a.conf", lookup=lookup)
    return [str(d) for d in e.value.diagnostics]


def test_check_arp_prints_back():
    c = load_text(CONF.format(check="check arp interval 20"), "a.conf", lookup=False)
    assert c.tables[0].check.kind == "arp"
    assert c.tables[0].hosts[0].link is None             # found at load, with lookups
    printed = print_config(c)
    assert "check arp" in printed
    c2 = load_text(printed, "p.conf", lookup=False)
    assert c2.tables == c.tables


@pytest.mark.parametrize("check, msg", [
    ("check arp \"eth0\"", "a.conf:5:27: check arp takes no argument"),
    ("check arp check port 81", "check port with check arp: an ARP request has no port"),
    ("check arp check source 192.0.2.1", "check source with check arp"),
    ("check arp connect timeout 10", "connect timeout with check arp: an ARP request opens "
                                     "no connection"),
])
def test_check_arp_refusals(check, msg):
    errs = errors(CONF.format(check=check))
    assert any(msg in e for e in errs), errs


def test_ipv6_host_refused_at_the_host():
    text = CONF.format(check="check arp").replace("192.0.2.20", "2001:db8::20")
    errs = errors(text)
    assert errs == ["a.conf:2:15: check arp: host 2001:db8::20 is an IPv6 address, and ARP "
                    "asks only for IPv4 ones (check icmp pings IPv6 hosts)"], errs


def test_own_address_refused_with_lookups():
    # a route the kernel always has: 127.0.0.1 is local, no ARP asks for it
    text = CONF.format(check="check arp").replace("192.0.2.20", "127.0.0.1")
    errs = errors(text, lookup=True)
    assert "a.conf:2:15: check arp: host 127.0.0.1: it is an address of this machine" \
        in errs, errs
