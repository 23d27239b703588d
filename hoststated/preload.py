"""What a child imports as root, before its privilege drop.

After the drop a child runs as an unprivileged user that may not be able to
read its own code or the interpreter's (a checkout or a pyenv under /root,
mode 0700; ProtectHome= under systemd). So every module a role may import
later is imported here, once, by cli.child_main: the role's own modules, the
check modules and protocol libraries (hce) or the kernel adapters' libraries
(pfe) that the configuration uses, and the standard library's lazy imports
they trigger at run time (a codec looked up by name, a thread pool made on
first use). A missing module is fatal here, with its name, instead of a
check that can never pass or a kernel never written.

A reload that brings in a check kind or an engine the first configuration
did not use imports its modules then, after the drop; where the code is not
readable by the child's user that check fails with the import error.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

# run-time imports of the standard library itself, hit only after the drop
STDLIB_LAZY = (
    "encodings.idna",                # str.encode("idna"): dnspython, radius, ssl hostnames
    "encodings.ascii", "encodings.latin_1", "encodings.utf_8",
    "encodings.punycode",
    "concurrent.futures.thread",     # the default executor: asyncio.to_thread, getaddrinfo
    "asyncio.subprocess", "asyncio.threads", "asyncio.base_subprocess",
    "asyncio.unix_events", "asyncio.sslproto",
    "ssl",
    "_strptime",                     # time.strptime, ssl.cert_time_to_seconds
    "email.utils",
    "stringprep", "unicodedata",
)

HCE = (
    "hoststated.hce", "hoststated.hce_sched", "hoststated.hce_state", "hoststated.control",
    "hoststated.checks", "hoststated.checks.base", "hoststated.checks.runner",
    "hoststated.checks.poller", "hoststated.checks.registry", "hoststated.checks.icmp",
    "hoststated.checks.script", "hoststated.checks.tcp", "hoststated.checks.tls",
    "hoststated.checks.http", "hoststated.checks.send", "hoststated.checks.linechat",
    # the protocol checks spoken here (no library): cheap, so all of them
    "hoststated.checks.smtp", "hoststated.checks.ftp", "hoststated.checks.imap",
    "hoststated.checks.pop", "hoststated.checks.nntp", "hoststated.checks.radius",
    "hoststated.checks.sip", "hoststated.checks.httpproxy", "hoststated.checks.redis",
    # issue 14: notify commands and alert mail (what smtplib and email load as they run)
    "hoststated.notify", "hoststated.maintenance", "hoststated.inotify",
    "hoststated.commands", "smtplib", "email.message", "email.policy",
    "email.contentmanager", "email.generator", "email.headerregistry",
    "email._header_value_parser", "email.charset", "email.base64mime", "email.quoprimime",
    "email.encoders", "email.iterators",
)

# issue 17: a check worker runs hce's checks (HCE, above, and the kinds')
WORKER = ("hoststated.hce_worker", "hoststated.hce_shards")

RELAY = ("hoststated.relay", "hoststated.relay_tcp", "hoststated.relay_select",
         "hoststated.relay_tls", "hoststated.relay_proxy", "hoststated.relay_http",
         "hoststated.relay_dns", "secrets", "ipaddress", "struct", "resource", "hashlib", "random")

# check kind -> what it imports when it runs (its module, its library); only
# for the kinds the configuration uses: each library costs 10-20 MB
HCE_KINDS: dict[str, tuple[str, ...]] = {
    "dns": ("hoststated.checks.dns", "dns.message", "dns.name", "dns.rdatatype",
            "dns.rcode", "dns.flags", "dns.exception", "dns.rdata",
            # a reply may carry any record type; each is a module loaded on sight
            "dns.rdtypes.ANY.*", "dns.rdtypes.IN.*", "dns.rdtypes.CH.*"),
    "mysql": ("hoststated.checks.mysql", "pymysql", "pymysql.err", "pymysql.connections"),
    "pgsql": ("hoststated.checks.pgsql", "pg8000.native", "pg8000.exceptions"),
    "ldap": ("hoststated.checks.ldap", "ldap3", "ldap3.core.exceptions"),
    "ldaps": ("hoststated.checks.ldap", "ldap3", "ldap3.core.exceptions"),
    # issue 14: check arp's frames and its raw socket's reader (hce_sched
    # imports them when the first arp check runs: after the drop)
    "arp": ("hoststated.checks.arp", "hoststated.hce_arp"),
}
# the certificate reader behind `show hosts`' TLS details
TLS_LIBRARY = ("cryptography.x509",)
TLS_KINDS = {"tls", "https", "imaps", "pops", "ldaps"}

PFE = ("hoststated.pfe", "hoststated.kernel", "hoststated.kernel.reconciler")
PFE_ENGINES: dict[str, tuple[str, ...]] = {
    "nftables": ("nftables",),
    "ipvs": ("pyroute2", "pyroute2.ipvs", "pyroute2.netlink.exceptions"),
    "pf": (),
    "none": (),
}

# routers (issue 16): kernel.routes' rtnetlink writer
PFE_ROUTERS = ("pyroute2", "pyroute2.iproute", "pyroute2.netlink.exceptions")


def _uses_tls(check: dict) -> bool:
    return (check.get("kind") in TLS_KINDS or bool(check.get("tls"))
            or bool(check.get("starttls")))


def modules(role: str, config: dict) -> list[str]:
    """Every module `role` may import after its drop, in order, for the
    configuration as INIT carries it (Config.model_dump(by_alias=True):
    read as data here, so that it is validated once, by the role)."""
    out = list(STDLIB_LAZY)
    if role in ("hce", "worker"):
        out += HCE
        if role == "worker":
            out += WORKER
        for table in (*config.get("tables", ()), *config.get("relay_tables", ())):
            check = table.get("check") or {}
            out += HCE_KINDS.get(check.get("kind"), ())
            if _uses_tls(check):
                out += TLS_LIBRARY
    elif role == "relay":
        out += RELAY
        if importlib.util.find_spec("uvloop") is not None:
            out.append("uvloop")
    elif role == "pfe":
        out += PFE
        default = config.get("global", {}).get("engine") or "nftables"
        engines = {r.get("engine") or default for r in config.get("redirects", ())}
        for engine in sorted(engines | {default}):
            out += PFE_ENGINES.get(engine, ())
        if config.get("routers") and default != "none":
            out += PFE_ROUTERS
    return list(dict.fromkeys(out))


def preload(role: str, config) -> None:
    """Import modules(role, config); any failure is an ImportError naming
    the module.
    `pkg.*` stands for every module of the package pkg."""
    for name in modules(role, config):
        if name.endswith(".*"):
            pkg = _import(name[:-2])
            for m in pkgutil.iter_modules(pkg.__path__):
                _import(f"{pkg.__name__}.{m.name}")
        else:
            _import(name)


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise
    except Exception as e:      # a module that fails as it runs: broken, say which
        raise ImportError(f"{type(e).__name__}: {e}", name=name) from None
