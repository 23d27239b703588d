"""Hosts that read the PROXY protocol, end to end: nginx (`listen ...
proxy_protocol`, which refuses a connection that does not open with a PROXY
header) behind a relay that sends one (`forward to ... proxy-protocol v1|v2`).
hce's checks to those hosts open with a header of their own (v1 UNKNOWN, v2
LOCAL, as HAProxy's checks do), so the host is seen up; without it every
check fails and the relay has no host. The client's address reaches nginx in
the relay's header."""

from __future__ import annotations

import shutil

import pytest

from lab import Farm, Lab, usable, wait_for

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip"), reason="needs root and ip"),
              pytest.mark.skipif(shutil.which("nginx") is None,
                                 reason="nginx not installed (tools/apt/protocols.txt)")]

CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <px> {{ 198.51.100.11 }}
relay www {{
	listen on 192.0.2.1 port 8080
	forward to <px> port 81 proxy-protocol {version} check http "/" code 200
}}
"""

NGINX = """
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {addr}:81 proxy_protocol;
        location / {{ return 200 "from $proxy_protocol_addr\\n"; }}
    }}
}}
"""


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_checks_speak_the_header_the_hosts_read(tmp_path, version):
    with Lab("rp") as lab:
        farm = Farm(lab, backends=1, sources=2)
        b1 = farm.backends[0]
        d = tmp_path / "nginx"
        d.mkdir()
        (d / "nginx.conf").write_text(NGINX.format(d=d, addr=farm.addr[b1]))
        lab.spawn("nginx", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log"), ns=b1)
        wait_for(lambda: farm.ns(b1, "ss", "-Hltn", "sport = :81").stdout.strip(),
                 what="nginx listening")
        daemon = farm.daemon(CONFIG.replace("{version}", version))
        daemon.wait_for(lambda: [h["status"] for h in daemon.json("show hosts")["hosts"]]
                        == ["up"], what="the PROXY-reading host checked up")
        sources = ["192.0.2.3", "192.0.2.4"]
        r = farm.requests(Farm.director_client_addr, 6, port=8080, sources=sources)
        assert r["failed"] == 0, r
        # nginx read each client's own address from the relay's header
        assert r["counts"] == {"from 192.0.2.3": 3, "from 192.0.2.4": 3}, r
        # and the checks' headers were read as such, not as broken ones
        assert "broken header" not in (d / "error.log").read_text()
        assert daemon.stop() == 0
