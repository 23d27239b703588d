"""hoststated.preload: what each role imports before its privilege drop.

The last test is the point of it: after preload, what the checks do at run
time (an idna codec, a thread pool, a subprocess, a DNS reply with any record
type, TLS) imports nothing more, seen by a finder put first on sys.meta_path
in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from hoststated import preload
from hoststated.conf.load import load_text
from hoststated.parent import wire_config

ROOT = Path(__file__).resolve().parents[2]

PROTOCOLS = """
engine ipvs
table <dns> { 198.51.100.53 }
table <db> { 198.51.100.33 }
table <web> { 198.51.100.11 }
redirect "dns" {
	listen on 203.0.113.53 udp port 53
	forward to <dns> check dns "www.example.test" type A
}
redirect "db" {
	listen on 203.0.113.33 port 3306
	forward to <db> check mysql user "probe"
}
redirect "web" {
	listen on 203.0.113.10 port 443
	engine nftables
	forward to <web> check https "/" code 200
}
"""

PLAIN = """
table <web> { 198.51.100.11 }
redirect "web" {
	listen on 203.0.113.10 port 80
	forward to <web> check http "/" code 200
}
"""


def wire(text: str) -> dict:
    return wire_config(load_text(text, lookup=False))


def test_hce_imports_what_the_configs_checks_use():
    mods = preload.modules("hce", wire(PROTOCOLS))
    for name in ("encodings.idna", "concurrent.futures.thread", "hoststated.hce_sched",
                 "hoststated.checks.dns", "dns.rdtypes.IN.*", "pymysql",
                 "cryptography.x509"):
        assert name in mods, name
    plain = preload.modules("hce", wire(PLAIN))
    assert "pymysql" not in plain and "hoststated.checks.dns" not in plain
    assert "hoststated.checks.runner" in plain


def test_pfe_imports_the_libraries_of_the_engines_used():
    mods = preload.modules("pfe", wire(PROTOCOLS))
    assert "pyroute2.ipvs" in mods and "nftables" in mods and "hoststated.kernel" in mods
    plain = preload.modules("pfe", wire(PLAIN))
    assert "nftables" in plain and "pyroute2" not in plain


RUN_TIME = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, sys.argv[1])
    from hoststated import preload
    from hoststated.conf.load import load_text
    from hoststated.parent import wire_config
    config = wire_config(load_text(sys.argv[2], lookup=False))
    preload.preload("hce", config)
    preload.preload("pfe", config)

    late = []
    class Late:
        def find_spec(self, name, path=None, target=None):
            late.append(name)
            return None
    sys.meta_path.insert(0, Late())

    import asyncio, ssl
    "www.exämple.test".encode("idna")
    async def main():
        await asyncio.to_thread(lambda: None)
        p = await asyncio.create_subprocess_exec("true")
        await p.wait()
    asyncio.run(main())
    ssl.create_default_context()
    import dns.message, dns.rrset
    q = dns.message.make_query("www.example.test", "MX")
    r = dns.message.make_response(q)
    for rtype, data in (("MX", "10 mail.example.test."), ("A", "192.0.2.1"),
                        ("AAAA", "2001:db8::1"), ("TXT", '"x"'), ("SRV", "1 1 1 x.")):
        r.additional.append(dns.rrset.from_text("x.example.test.", 60, "IN", rtype, data))
    dns.message.from_wire(r.to_wire())
    # a name looked for but not found (dnspython tries IN.MX before ANY.MX)
    # fails the same way after the drop: only what was really imported counts
    print(" ".join(n for n in late if n in sys.modules))
""")


def test_nothing_is_imported_at_run_time_after_preload():
    out = subprocess.run([sys.executable, "-c", RUN_TIME, str(ROOT), PROTOCOLS],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert out == [], out
