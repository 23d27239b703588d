"""TLS relays end to end: the daemon terminates TLS for real clients (curl,
Python's ssl) and relays to the lab's HTTP backends; keypairs made by the
test with `cryptography`, found where relayd looks for them (a test
directory in place of /etc/ssl: $HOSTSTATED_SSL_DIR).

- two keypairs, chosen by SNI, the first the default (no SNI);
- curl over TLS gets a backend's page through the relay;
- a reload that replaces a keypair serves the new certificate on the same
  listening socket, and a session opened before it goes on;
- the relay processes never open a key file: their open descriptors hold
  none, and the key directory is root's (0700).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import PYTHON, Farm, Lab, in_netns, usable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from tls_certs import cert, install  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip", "curl"), reason="needs root, ip and curl")]

VIP = Farm.director_client_addr

CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <web> {{ 198.51.100.11 198.51.100.12 }}
http protocol secure {{
	tls keypair a.example
	tls keypair b.example
}}
relay www {{
	listen on 192.0.2.1 port 8443 tls
	protocol secure
	forward to <web> port 80 check http "/" code 200
}}
"""

# prints the CN of the certificate served for each SNI given (or none)
PEER_CN = r"""
import socket, ssl, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
for name in sys.argv[2:]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((sys.argv[1], 8443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=None if name == "-" else name) as s:
            c = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
            print(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
"""


def served(farm, *names: str) -> list[str]:
    r = subprocess.run(in_netns(farm.client, PYTHON, "-c", PEER_CN, VIP, *names),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_tls_termination_with_sni_and_a_reload_that_changes_a_keypair(tmp_path, monkeypatch):
    ssldir = tmp_path / "ssl"
    ssldir.mkdir(mode=0o700)
    install(str(ssldir), "a.example", *cert("a.example", sans=["a.example"]))
    install(str(ssldir), "b.example", *cert("b.example", sans=["b.example"]))
    monkeypatch.setenv("HOSTSTATED_SSL_DIR", str(ssldir))
    with Lab("rt") as lab:
        farm = Farm(lab, backends=2, sources=0)
        d = farm.daemon(CONFIG)
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="the backends up")
        assert served(farm, "a.example", "b.example", "-") == \
            ["a.example", "b.example", "a.example"]
        r = subprocess.run(in_netns(farm.client, "curl", "-sk", "--max-time", "10",
                                    f"https://{VIP}:8443/"),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() in {"b1", "b2"}, (r.returncode, r.stderr)

        # the relay processes hold no key file open, and cannot read the directory
        from test_relay_tcp import relay_pids
        for pid in relay_pids(d):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                assert str(ssldir) not in target, target

        # a long session over TLS, opened before the reload
        hold = lab.spawn(*in_netns(farm.client, PYTHON, "-c",
                                   "import socket, ssl, sys, time\n"
                                   "ctx = ssl._create_unverified_context()\n"
                                   "s = ctx.wrap_socket(socket.create_connection("
                                   "('192.0.2.1', 8443)))\n"
                                   "print('open', flush=True); sys.stdin.readline()\n"
                                   "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
                                   "print(s.recv(4096).split(b'\\r\\n')[0].decode(), flush=True)\n"),
                         stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        assert hold.stdout.readline().strip() == "open"
        # b.example gets a new certificate: CN renewed.b.example
        install(str(ssldir), "b.example", *cert("renewed.b.example", sans=["b.example"]))
        r = d.ctl("reload")
        assert r.returncode == 0, r.stderr
        assert served(farm, "b.example", "a.example") == ["renewed.b.example", "a.example"]
        hold.stdin.write("\n")
        hold.stdin.flush()
        assert hold.stdout.readline().strip() == "HTTP/1.0 200 OK"
