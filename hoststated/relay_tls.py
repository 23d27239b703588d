"""TLS for the relays: ssl.SSLContexts from the parent's TLS material.

The parent reads and checks every keypair as root (conf.keypairs) and hands
each relay process plain data, its *material*; a relay process never opens a
key file.  This module turns that material and a protocol's `tls` options
(conf.model.Protocol.tls, the option texts conf.build keeps) into contexts:

    server_context(material, tls_opts, listener=0) -> ssl.SSLContext
        for `listen on ... tls`: the listener's first keypair is the
        default, the others are chosen by SNI (sni_callback);
    client_context(tls_opts, ca_pem=None) -> ssl.SSLContext
        for `forward with tls`: verifies the backend's chain with `ca file`
        when there is one (relayd does not verify the name; SNI is the
        caller's server_hostname, see sni_name());
    parse(tls_opts) -> (Options, problems)
        relayd's meaning of the options, and what Python's ssl cannot do;
    check(tls_opts) -> problems
        parse() plus the cipher string and curve tried on a real context:
        conf.keypairs reports these at -n;
    Inspector(material, tls_opts).context(upstream_der) -> ssl.SSLContext
        TLS inspection: the upstream's certificate re-issued by the
        inspection CA (the only use of `cryptography` here).

relayd's options and their mapping (relayd.conf(5), relay.c):
  tlsv1.0 .. tlsv1.3, tlsv1 (1.0-1.2), no ...: the versions enabled, default
      tlsv1.2 and tlsv1.3; Python sets a minimum and a maximum, so the enabled
      versions must be contiguous; sslv3 is refused (OpenSSL 3 has none).
  ciphers S: set_ciphers(S), default "HIGH:!aNULL"; libtls' words secure,
      default, compat, legacy, all, insecure are mapped.  Python's ssl cannot
      set the TLSv1.3 suites: they stay OpenSSL's.
  ecdhe C: set_ecdh_curve(C); "default"/"auto" keep OpenSSL's groups; Python
      sets one curve only: a list is OpenSSL's default groups when they hold
      every curve listed (a warning), else refused.
  edh [params auto]: DHE with the RFC 7919 ffdhe2048 group (load_dh_params);
      "legacy" (1024 bits) is refused, below OpenSSL's security level.
  no session tickets: OP_NO_TICKET and no TLSv1.3 tickets.  With tickets,
      each relay process has its own ticket key (Python cannot share one), so
      a session resumes only in the process that made it.
  no cipher-server-preference, client-renegotiation: OpenSSL's options.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from dataclasses import dataclass, field

DEFAULT_CIPHERS = "HIGH:!aNULL"              # relayd.h TLSCIPHERS_DEFAULT
# libtls' cipher keywords (tls_config_set_ciphers), in OpenSSL's words
CIPHER_WORDS = {
    "secure": "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL",
    "compat": DEFAULT_CIPHERS,
    "all": "ALL:!aNULL:!eNULL",
}
CIPHER_WORDS["default"] = CIPHER_WORDS["secure"]
CIPHER_WORDS["legacy"] = CIPHER_WORDS["compat"]
CIPHER_WORDS["insecure"] = CIPHER_WORDS["all"]

WARNING = "warning: "
VERSIONS = ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")
_TLSVERSION = {"tlsv1.0": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
               "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}
DEFAULT_VERSIONS = frozenset({"tlsv1.2", "tlsv1.3"})
# NIST names libtls accepts, as OpenSSL's short names (set_ecdh_curve takes those)
_NIST = {"p-256": "prime256v1", "p-384": "secp384r1", "p-521": "secp521r1",
         "x25519": "X25519", "x448": "X448"}
# OpenSSL 3's default groups (the EC ones), offered when no curve is set
DEFAULT_GROUPS = {"X25519", "prime256v1", "X448", "secp521r1", "secp384r1"}

# RFC 7919 ffdhe2048 (`openssl genpkey -genparam -algorithm DH -pkeyopt
# group:ffdhe2048`): a fixed, public group, so nothing is generated at start
FFDHE2048 = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""

# conf.lexer's quoting: a backslash escapes a quote, a space or a tab
# only; before anything else it is itself (conf.lexer.quote writes them)
_WORD = re.compile(r'"((?:[^"\\]|\\[" \t]?)*)"|(\S+)')
_ESCAPE = re.compile(r'\\([" \t])')


def words(opt: str) -> list[str]:
    """An option as conf.build keeps it (`ca key "/k" password "p"`) in
    words, quotes taken off."""
    out = []
    for quoted, bare in _WORD.findall(opt):
        out.append(_ESCAPE.sub(r"\1", quoted) if bare == "" else bare.rstrip(","))
    return out


def parse_protocols(text: str) -> frozenset:
    """libtls' protocol string (tls_config_parse_protocols, the `protocols`
    of httpd.conf(5)): "tlsv1.2,tlsv1.3", "all"/"legacy", "default"/"secure",
    "tlsv1" (all four), "!tlsv1.0" removes (from all, when first); ValueError
    for an unknown word.  relayd's grammar spells versions as flags instead
    (`no tlsv1.0`); this serves a protocol string should the grammar take one."""
    out: set[str] = set()
    for part in re.split(r"[,:]", text):
        word = part.strip()
        negate = word.startswith("!")
        if negate:
            word = word[1:]
            if not out:
                out = set(VERSIONS)
        word = word.lower()
        if word in ("all", "legacy", "tlsv1"):
            chosen = set(VERSIONS)
        elif word in ("default", "secure"):
            chosen = set(DEFAULT_VERSIONS)
        elif word in VERSIONS:
            chosen = {word}
        else:
            raise ValueError(f"invalid TLS protocol: {part.strip()} (tlsv1.0 .. tlsv1.3, "
                             "all, default, legacy, secure, !NAME)")
        out = out - chosen if negate else out | chosen
    return frozenset(out)


@dataclass(frozen=True)
class Options:
    """What a protocol's tls options mean; defaults as relayd's."""
    versions: frozenset = DEFAULT_VERSIONS
    ciphers: str = DEFAULT_CIPHERS
    curve: str | None = None                 # None: OpenSSL's default groups
    edh: bool = False
    tickets: bool = True
    server_preference: bool = True
    client_renegotiation: bool = False
    keypairs: tuple[str, ...] = ()
    ca_file: str | None = None
    ca_cert: str | None = None
    ca_key: str | None = None
    ca_password: str | None = field(default=None, repr=False)
    client_ca: str | None = None

    @property
    def minimum(self) -> ssl.TLSVersion:
        return _TLSVERSION[min(self.versions, key=VERSIONS.index)]

    @property
    def maximum(self) -> ssl.TLSVersion:
        return _TLSVERSION[max(self.versions, key=VERSIONS.index)]


def parse(tls_opts) -> tuple[Options, list[tuple[int, str]]]:
    """The options, and the problems found as (index in tls_opts, message);
    a message starting "warning: " tells what is done other than asked."""
    d: dict = {}
    versions = set(DEFAULT_VERSIONS)
    keypairs: list[str] = []
    problems: list[tuple[int, str]] = []
    for i, opt in enumerate(tls_opts):
        w = words(opt)
        neg = bool(w) and w[0] == "no"
        if neg:
            w = w[1:]
        if not w:
            continue
        key = w[0]
        if key == "session" and w[1:2] == ["tickets"]:
            d["tickets"] = not neg
        elif key == "ciphers" and len(w) == 2:
            d["ciphers"] = CIPHER_WORDS.get(w[1].lower(), w[1])
        elif key == "ecdhe" and len(w) == 2:
            curves = [c.strip() for c in w[1].split(",") if c.strip()]
            if len(curves) == 1 and curves[0].lower() in ("default", "auto"):
                d["curve"] = None
            elif len(curves) == 1:
                d["curve"] = _NIST.get(curves[0].lower(), curves[0])
            else:
                named = [_NIST.get(c.lower(), c) for c in curves]
                other = [c for c, n in zip(curves, named) if n not in DEFAULT_GROUPS]
                if other:
                    problems.append((i, f"ecdhe {w[1]}: Python's ssl sets one curve "
                                        "(set_ecdh_curve), not a list, and "
                                        + ", ".join(other) + " is not among OpenSSL's "
                                        "default groups: name one curve, or default"))
                else:
                    # OpenSSL's defaults offer every curve listed: a superset,
                    # in OpenSSL's order of preference
                    d["curve"] = None
                    problems.append((i, f"warning: ecdhe {w[1]}: Python's ssl sets one "
                                        "curve, not a list: OpenSSL's default groups are "
                                        "offered (X25519, P-256, X448, P-521, P-384), "
                                        "which include these"))
        elif key == "edh":
            param = w[2] if len(w) >= 3 and w[1] == "params" else "auto"
            if neg or param == "none":
                d["edh"] = False
            elif param == "auto":
                d["edh"] = True
            elif param == "legacy":
                problems.append((i, "edh params legacy: 1024-bit DH is below OpenSSL's "
                                    "security level; use edh params auto (2048 bits)"))
            else:
                problems.append((i, f"invalid edh params: {param} (none, auto or legacy)"))
        elif key == "keypair" and len(w) == 2:
            keypairs.append(w[1])
        elif key == "ca" and len(w) >= 3 and w[1] in ("file", "cert"):
            d["ca_file" if w[1] == "file" else "ca_cert"] = w[2]
        elif key == "ca" and len(w) == 5 and w[1] == "key" and w[3] == "password":
            d["ca_key"], d["ca_password"] = w[2], w[4]
        elif key == "client" and len(w) == 3 and w[1] == "ca":
            d["client_ca"] = w[2]
        elif key in VERSIONS or key == "tlsv1":
            chosen = VERSIONS[:3] if key == "tlsv1" else (key,)
            (versions.difference_update if neg else versions.update)(chosen)
        elif key == "sslv3":
            if not neg:
                problems.append((i, "sslv3: Python's ssl (OpenSSL 3) has no SSLv3"))
        elif key == "cipher-server-preference":
            d["server_preference"] = not neg
        elif key == "client-renegotiation":
            d["client_renegotiation"] = not neg
        else:
            problems.append((i, f"tls {opt}: not a TLS option hoststated knows"))
    if not versions:
        problems.append((len(tls_opts) - 1, "no TLS version is left enabled"))
    else:
        idx = sorted(VERSIONS.index(v) for v in versions)
        if idx != list(range(idx[0], idx[-1] + 1)):
            problems.append((len(tls_opts) - 1,
                             "the TLS versions enabled (" + ", ".join(VERSIONS[j] for j in idx)
                             + ") have a gap: Python's ssl sets a minimum and a maximum "
                               "version, so enable the ones between too"))
    if ("ca_cert" in d) != ("ca_key" in d):
        have, lack = ("ca cert", "ca key") if "ca_cert" in d else ("ca key", "ca cert")
        problems.append((len(tls_opts) - 1, f"tls {have} without {lack}: TLS inspection "
                                              "needs both"))
    d["versions"] = frozenset(versions) or DEFAULT_VERSIONS
    d["keypairs"] = tuple(keypairs)
    return Options(**d), problems


def check(tls_opts) -> list[tuple[int, str]]:
    """parse()'s problems, and the cipher string and curve as OpenSSL takes
    them (tried on a throwaway context)."""
    _, problems = parse(tls_opts)
    ctx = None
    for i, opt in enumerate(tls_opts):
        w = words(opt)
        if w[:1] in (["ciphers"], ["ecdhe"]) and ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)     # only when there is a test
        if w[:1] == ["ciphers"] and len(w) == 2:
            try:
                ctx.set_ciphers(CIPHER_WORDS.get(w[1].lower(), w[1]))
            except ssl.SSLError:
                problems.append((i, f"ciphers {w[1]}: OpenSSL knows no cipher in it"))
        elif w[:1] == ["ecdhe"] and len(w) == 2 and "," not in w[1] \
                and w[1].lower() not in ("default", "auto"):
            try:
                ctx.set_ecdh_curve(_NIST.get(w[1].strip().lower(), w[1].strip()))
            except (ValueError, ssl.SSLError):
                problems.append((i, f"ecdhe {w[1]}: OpenSSL knows no such curve "
                                    "(e.g. X25519, prime256v1, secp384r1)"))
    return problems


def options(tls_opts) -> Options:
    """The options of a configuration -n accepted; ValueError if not."""
    opts, problems = parse(tls_opts)
    errors = [msg for _, msg in problems if not is_warning(msg)]
    if errors:
        raise ValueError(errors[0])
    return opts


def is_warning(message: str) -> bool:
    return message.startswith(WARNING)


def _configure(ctx: ssl.SSLContext, opts: Options) -> None:
    ctx.minimum_version = opts.minimum
    ctx.maximum_version = opts.maximum
    ciphers = opts.ciphers
    if opts.minimum < ssl.TLSVersion.TLSv1_2:
        # OpenSSL 3 refuses TLSv1.0/1.1 above security level 0: asked for, allowed
        ciphers += ":@SECLEVEL=0"
    ctx.set_ciphers(ciphers)
    if opts.curve is not None:
        ctx.set_ecdh_curve(opts.curve)
    if not opts.tickets:
        ctx.options |= ssl.OP_NO_TICKET
    if not opts.client_renegotiation:
        ctx.options |= ssl.OP_NO_RENEGOTIATION


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("hoststated-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _load_from_memory(load, data: bytes) -> None:
    """Call load(path) on data through a memfd: ssl reads keys from files
    only, and the relay has no key file to read; nothing reaches a disk or a
    name others can open."""
    fd = _memfd(data)
    try:
        load(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        raise OSError("cannot load TLS material: /proc is not mounted") from None
    finally:
        os.close(fd)


def _keypair_context(opts: Options, kp: dict, client_ca: bytes | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, opts)
    if opts.server_preference:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if not opts.tickets:
        ctx.num_tickets = 0
    if opts.edh:
        _load_from_memory(ctx.load_dh_params, FFDHE2048)
    _load_from_memory(ctx.load_cert_chain, kp["cert"] + b"\n" + kp["key"])
    if client_ca is not None:
        ctx.load_verify_locations(cadata=client_ca.decode("ascii"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _name_matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    # a wildcard stands for one whole leftmost label (RFC 6125 6.4.3)
    return (pattern.startswith("*.") and "." in name
            and name.split(".", 1)[1] == pattern[2:] and name.split(".", 1)[0] != "")


def choose(keypairs: list[dict], server_name: str | None) -> int:
    """The index of the keypair for a client's SNI name: one that names it
    exactly, else one whose wildcard covers it, else the first (the
    default, as libtls)."""
    if server_name:
        name = server_name.rstrip(".").lower()
        for exact in (True, False):
            for i, kp in enumerate(keypairs):
                for n in kp.get("names", ()):
                    n = n.lower()
                    if (n == name) if exact else _name_matches(n, name):
                        return i
    return 0


def server_context(material: dict, tls_opts, listener: int = 0) -> ssl.SSLContext:
    """The server context of a relay's TLS listener (material["listeners"]
    [listener], in the relay's listen order): its first keypair by default,
    another when the client's SNI names one of its certificate's names."""
    opts = options(tls_opts)
    keypairs = material["listeners"][listener]["keypairs"]
    if not keypairs:
        raise ValueError("no keypair for this listener")
    client_ca = material.get("client_ca")
    contexts = [_keypair_context(opts, kp, client_ca) for kp in keypairs]
    default = contexts[0]
    if len(contexts) > 1:
        def sni(sslobj, server_name, ctx):
            pick = contexts[choose(keypairs, server_name)]
            if pick is not ctx:
                sslobj.context = pick
            return None
        # the callback is the default context's: the one each handshake starts on
        default.sni_callback = sni
    return default


def server_contexts(material: dict, tls_opts) -> list[ssl.SSLContext]:
    """server_context() for every TLS listener, in material's order."""
    return [server_context(material, tls_opts, i)
            for i in range(len(material.get("listeners", ())))]


def client_context(tls_opts, ca_pem: bytes | None = None,
                   check_hostname: bool = False) -> ssl.SSLContext:
    """The context for `forward with tls`.  With ca_pem (the protocol's
    `ca file`) the backend's chain must verify; without, nothing is verified
    (relayd: tls_config_insecure_noverifycert).  relayd never checks the
    backend's name (relay.c: "relayd can't verify the name of certs");
    check_hostname=True does, against the server_hostname the caller gives."""
    opts = options(tls_opts)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _configure(ctx, opts)
    if ca_pem is not None:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = check_hostname
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Inspector:
    """TLS inspection (relayd: `listen on ... tls`, `forward with tls to
    destination`, `ca cert`, `ca key`): the client is served a copy of the
    upstream server's certificate with the listener's own public key, issued
    and signed by the inspection CA, as relayd's ssl_update_certificate
    does.  The relay connects upstream first, then calls context() with the
    server's certificate (DER, SSLObject.getpeercert(binary_form=True)) for
    the client's handshake.  Copies are kept per upstream certificate (the
    last CACHE), since signing costs more than a handshake.

    This is the one part of the relays that needs `cryptography`; it is
    imported only when inspection is configured."""

    CACHE = 256

    def __init__(self, material: dict, tls_opts, listener: int = 0) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        if not (material.get("ca_cert") and material.get("ca_key")):
            raise ValueError("TLS inspection needs the material's ca_cert and ca_key")
        self.opts = options(tls_opts)
        self.kp = material["listeners"][listener]["keypairs"][0]
        self.client_ca = material.get("client_ca")
        self.ca = x509.load_pem_x509_certificate(material["ca_cert"])
        self.ca_key = serialization.load_pem_private_key(material["ca_key"], None)
        self.key = serialization.load_pem_private_key(self.kp["key"], None)
        self.contexts: dict[bytes, ssl.SSLContext] = {}

    def certificate(self, upstream_der: bytes) -> bytes:
        """The copy of the upstream certificate the client sees (PEM)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
        up = x509.load_der_x509_certificate(upstream_der)
        pub = self.key.public_key()
        b = (x509.CertificateBuilder().subject_name(up.subject)
             .issuer_name(self.ca.subject).public_key(pub)
             .serial_number(up.serial_number)
             .not_valid_before(up.not_valid_before_utc)
             .not_valid_after(up.not_valid_after_utc))
        for ext in up.extensions:
            # the key identifiers name the upstream's keys: made anew below
            if isinstance(ext.value, (x509.SubjectKeyIdentifier,
                                      x509.AuthorityKeyIdentifier)):
                continue
            b = b.add_extension(ext.value, ext.critical)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            self.ca_key.public_key()), False)
        algo = (None if isinstance(self.ca_key, (ed25519.Ed25519PrivateKey,
                                                 ed448.Ed448PrivateKey))
                else hashes.SHA256())
        return b.sign(self.ca_key, algo).public_bytes(serialization.Encoding.PEM)

    def context(self, upstream_der: bytes) -> ssl.SSLContext:
        """The server context for a client whose upstream sent this certificate."""
        ctx = self.contexts.pop(upstream_der, None)
        if ctx is None:
            kp = dict(self.kp, cert=self.certificate(upstream_der))
            ctx = _keypair_context(self.opts, kp, self.client_ca)
            if len(self.contexts) >= self.CACHE:
                del self.contexts[next(iter(self.contexts))]
        self.contexts[upstream_der] = ctx          # the newest last
        return ctx


def sni_name(host: str | None) -> str | None:
    """The server_hostname to send a backend: its host name where known,
    never an address (SNI carries names only, RFC 6066 3)."""
    if not host:
        return None
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return None
    except ValueError:
        return host.rstrip(".")
