"""The IPVS backend's pure parts (the kernel round trips run in the VM:
tests/vm/test_ipvs_vm.py)."""

from __future__ import annotations

import sys

from hoststated.conf.model import IPVS_SCHEDULER
from hoststated.kernel.ipvs import (FWD_METHOD, MODE_OF, _plen_attr, _plen_of,
                                    canonical_mode, project_service)
from hoststated.kernel.service import Destination, Service, ServiceKey


def test_every_mode_has_a_scheduler_and_a_canonical_name():
    for mode, sched in IPVS_SCHEDULER.items():
        assert IPVS_SCHEDULER[canonical_mode(mode)] == sched
    assert canonical_mode("random") == "roundrobin"
    assert set(MODE_OF) == set(IPVS_SCHEDULER.values())


def test_forwarding_methods_are_the_kernel_numbers():
    # IP_VS_CONN_F_MASQ 0, _TUNNEL 2, _DROUTE 3: pyroute2's default (3) is never relied on
    assert FWD_METHOD == {"nat": 0, "tunnel": 2, "route": 3}


def test_ipv6_persistence_netmask_is_a_host_order_prefix_length():
    attr = _plen_attr(64)
    raw = bytes(int(x) for x in attr.split("."))
    assert int.from_bytes(raw, sys.byteorder) == 64
    assert _plen_of(attr) == 64


def test_port_range_becomes_one_service_per_port():
    k = ServiceKey(4, "tcp", "203.0.113.10", 8000, 8002)
    svc = Service(k, mode="roundrobin", destinations=(Destination("198.51.100.11", 8000),
                                                      Destination("198.51.100.12", 9000)))
    out = project_service(svc)
    assert [s.key.port for s in out] == [8000, 8001, 8002]
    assert all(s.key.port_end == 0 for s in out)
    # destinations on the listen port follow each port; a fixed port stays
    assert {d.port for d in out[1].destinations} == {8001, 9000}


def test_projection_keeps_what_ipvs_has():
    k = ServiceKey(4, "udp", "203.0.113.53", 53)
    svc = Service(k, mode="weighted-least-connections", method="route", interface="eth0",
                  persistence=60, netmask=None, one_packet=True,
                  destinations=(Destination("198.51.100.11", 53, 0, 100, 10),))
    (p,) = project_service(svc)
    assert p.mode == "weighted-least-connections" and p.method == "route"
    assert p.interface is None and p.one_packet and p.persistence == 60
    assert p.netmask == "255.255.255.255"
    assert p.destinations == svc.destinations
    # with no destination a service's method cannot be read back: it is not compared
    (empty,) = project_service(Service(k, method="tunnel"))
    assert empty.method == "nat"
