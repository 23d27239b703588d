"""The relays' TLS files: found as relayd finds them, checked, read as root.

relayd.conf(5), `tls keypair NAME` in a protocol: for a relay listening on
port P with `tls`, the certificate is /etc/ssl/NAME:P.crt and the key
/etc/ssl/private/NAME:P.key, else /etc/ssl/NAME.crt and
/etc/ssl/private/NAME.key (relayd.c relay_load_certfiles: the certificate
found decides which key); several keypairs serve SNI, the first is the
default; without one the listen address is the name.  `ca file` verifies the
backends of `forward with tls`; `ca cert` and `ca key ... password` are the
TLS inspection CA; `client ca` verifies client certificates.

check_options() says what the options cannot mean (always, --no-lookup too);
collect() reads and checks the files (not with --no-lookup, unless the
daemon asks): each file exists and is readable, the key matches the
certificate, the certificate is valid now, and its names are told when they
miss the keypair's name; it returns what it read, the plain data
(dict/list/str/bytes/int, msgpack-able) the parent hands the relay
processes, which never open a key file (relay_tls builds the ssl contexts
from it).  The parent has it from conf.load(..., tls=dict), as root, at
start and at each reload: each file is read once.  material(config) reads
it for a Config loaded already:

    {relay name: {
        "listeners": [{"address": str, "port": int,      # its `tls` listeners
                       "keypairs": [{"name": str, "cert": PEM chain bytes,
                                     "key": PEM PKCS#8 bytes, "names": [str],
                                     "not_after": int (Unix time)}, ...]}],
        "ca": PEM bytes | None,          # `ca file`, with `forward with tls`
        "ca_cert": PEM | None, "ca_key": PEM PKCS#8 | None (decrypted),
        "client_ca": PEM | None,
        "inspect": bool}}               # TLS inspection (relay_tls.Inspector)

Only relays with a `tls` listener or a `forward with tls` are in it.  The
directory (/etc/ssl) is SSL_DIR, or $HOSTSTATED_SSL_DIR (for tests).
"""

from __future__ import annotations

import datetime
import os
import stat

from hoststated import relay_tls
from hoststated.conf import model
from hoststated.conf.errors import ConfigError, Reporter

SSL_DIR = "/etc/ssl"
ENV_SSL_DIR = "HOSTSTATED_SSL_DIR"
MAX_PEM = 1 << 20               # a certificate chain or key file, at most

Where = tuple[str, int, int]


def ssl_dir() -> str:
    return os.environ.get(ENV_SSL_DIR) or SSL_DIR


class Problem(Exception):
    """A file that cannot serve, and why (the message for people)."""


def _read(path: str) -> tuple[bytes, os.stat_result]:
    try:
        # O_NONBLOCK: a FIFO put there must not hang the start
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise Problem(f"{path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Problem(f"{path}: not a regular file")
        data = os.read(fd, MAX_PEM + 1)
        while len(data) <= MAX_PEM and (more := os.read(fd, MAX_PEM + 1 - len(data))):
            data += more
    except OSError as e:
        raise Problem(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PEM:
        raise Problem(f"{path}: over {MAX_PEM >> 20} MiB: not a certificate or key")
    return data, st


def _certs(path: str, data: bytes) -> list:
    from cryptography import x509
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise Problem(f"{path}: no PEM certificate in it")
    return certs


def _key(path: str, data: bytes, password: str | None = None):
    from cryptography.hazmat.primitives import serialization
    try:
        return serialization.load_pem_private_key(
            data, password=password.encode() if password is not None else None)
    except TypeError:
        if password is None:
            raise Problem(f"{path}: the key is encrypted; a keypair's key takes no "
                          "password (decrypt it: openssl pkey -in KEY -out KEY)") from None
        raise Problem(f"{path}: the key is not encrypted, but a password is given") \
            from None
    except ValueError:
        raise Problem(f"{path}: " + ("no PEM private key in it, or the password is wrong"
                                     if password is not None
                                     else "no PEM private key in it")) from None
    except Exception as e:           # an unsupported key type
        raise Problem(f"{path}: cannot load the key: {e}") from None


def _pem(certs) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _matches(key, cert) -> bool:
    from cryptography.hazmat.primitives import serialization
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def names(cert) -> list[str]:
    """The names a certificate carries: its DNS and IP subject alternative
    names, else its common name."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        out = list(san.get_values_for_type(x509.DNSName))
        out += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        if out:
            return out
    except x509.ExtensionNotFound:
        pass
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _stamp(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _valid(path: str, cert, now: datetime.datetime) -> None:
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if now > after:
        raise Problem(f"{path}: the certificate expired on {_stamp(after)}")
    if now < before:
        raise Problem(f"{path}: the certificate is not valid before {_stamp(before)}")


def keypair(name: str, port: int, directory: str, now: datetime.datetime,
            warn=None) -> dict:
    """relayd's lookup of keypair `name` for a listener on `port`, checked;
    Problem if it cannot serve.  warn(message) hears what can but is odd."""
    crt_port = os.path.join(directory, f"{name}:{port}.crt")
    useport = os.path.lexists(crt_port)
    stem = f"{name}:{port}" if useport else name
    crt = os.path.join(directory, f"{stem}.crt")
    keyfile = os.path.join(directory, "private", f"{stem}.key")
    try:
        cdata, _ = _read(crt)
    except Problem as e:
        if not useport and not os.path.lexists(crt):
            raise Problem(f"{e} (nor {crt_port})") from None
        raise
    kdata, kst = _read(keyfile)
    certs = _certs(crt, cdata)
    key = _key(keyfile, kdata)
    if not _matches(key, certs[0]):
        raise Problem(f"{keyfile} does not match the certificate {crt} (another key)")
    _valid(crt, certs[0], now)
    carried = names(certs[0])
    if warn is not None:
        if kst.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            warn(f"{keyfile} can be read by other users: chmod 600 it")
        ocsp = os.path.join(directory, f"{stem}.ocsp")
        if os.path.isfile(ocsp) and os.path.getsize(ocsp) > 0:
            warn(f"OCSP staple {ocsp} is not used: Python's ssl cannot staple OCSP")
    return {"name": name, "cert": _pem(certs), "key": _key_pem(key), "names": carried,
            "not_after": int(certs[0].not_valid_after_utc.timestamp())}


def _bundle(path: str) -> bytes:
    data, _ = _read(path)
    return _pem(_certs(path, data))


def _inspection_ca(cert_path: str, key_path: str, password: str,
                   now: datetime.datetime) -> tuple[bytes, bytes]:
    cdata, _ = _read(cert_path)
    kdata, _ = _read(key_path)
    certs = _certs(cert_path, cdata)
    key = _key(key_path, kdata, password)
    if not _matches(key, certs[0]):
        raise Problem(f"{key_path} does not match the ca cert {cert_path} (another key)")
    _valid(cert_path, certs[0], now)
    return _pem(certs[:1]), _key_pem(key)


# --- over a configuration ------------------------------------------------------

def _where(obj, fallback: Where) -> Where:
    w = getattr(obj, "where", None)
    return (w.file, w.line, w.col) if w is not None else fallback


class _Places:
    """Where a protocol's tls option is written: conf.build's places when
    conf.load reads the file, else the relay's own place (material())."""

    def __init__(self, tls_where: dict[str, list[Where]] | None) -> None:
        self.tls_where = tls_where or {}

    def option(self, proto: model.Protocol | None, first_word: tuple[str, ...],
               fallback: Where) -> Where:
        if proto is None:
            return fallback
        places = self.tls_where.get(proto.name, [])
        for i, opt in enumerate(proto.tls):
            w = relay_tls.words(opt)
            if w[:1] == ["no"]:
                w = w[1:]
            if tuple(w[:len(first_word)]) == first_word and i < len(places):
                return places[i]
        return fallback

    def index(self, proto: model.Protocol, i: int, fallback: Where) -> Where:
        places = self.tls_where.get(proto.name, [])
        return places[i] if 0 <= i < len(places) else _where(proto, fallback)


def check_options(config: model.Config, report: Reporter,
                  tls_where: dict[str, list[Where]] | None = None) -> None:
    """What the protocols' tls options cannot mean, or Python's ssl cannot do."""
    places = _Places(tls_where)
    for p in config.protocols:
        for i, msg in relay_tls.check(p.tls):
            at = places.index(p, i, ("", 0, 0))
            if relay_tls.is_warning(msg):
                report.warn(at, f"protocol {p.name}: {msg[len(relay_tls.WARNING):]}")
            else:
                report.error(at, f"protocol {p.name}: {msg}")


def collect(config: model.Config, report: Reporter,
            tls_where: dict[str, list[Where]] | None = None,
            directory: str | None = None,
            now: datetime.datetime | None = None) -> dict:
    """Every relay's TLS material (module doc), each problem reported at the
    tls option's place, else at the relay's."""
    directory = directory or ssl_dir()
    now = now or datetime.datetime.now(datetime.timezone.utc)
    places = _Places(tls_where)
    protos = {p.name: p for p in config.protocols}
    out: dict[str, dict] = {}
    done: dict[tuple, dict | None] = {}      # a file pair read once per call
    for r in config.relays:
        listeners = [lst for lst in r.listen if lst.tls]
        fwd_tls = any(f.tls for f in r.forward)
        if not listeners and not fwd_tls:
            continue
        rw = _where(r, ("", 0, 0))
        proto = protos.get(r.protocol) if r.protocol else None
        if r.protocol and proto is None:
            continue                          # conf.build tells it is not defined
        opts, problems = relay_tls.parse(proto.tls if proto else ())
        if any(not relay_tls.is_warning(msg) for _, msg in problems):
            continue                          # check_options tells them
        m: dict = {"listeners": [], "ca": None, "ca_cert": None, "ca_key": None,
                   "client_ca": None}
        for lst in listeners:
            kps = []
            for kpname in opts.keypairs or (lst.address,):
                explicit = bool(opts.keypairs)
                at = places.option(proto, ("keypair", kpname), rw) if explicit else rw
                key = (kpname, lst.port)
                if key not in done:
                    told: list[str] = []
                    try:
                        done[key] = keypair(kpname, lst.port, directory, now, told.append)
                    except Problem as e:
                        done[key] = None
                        what = (f"keypair {kpname}" if explicit else
                                f"listen on {lst.address} port {lst.port} tls: no keypair "
                                "named by the protocol, so the address is the name")
                        report.error(at, f"relay {r.name}: {what}: {e}")
                    for msg in told:
                        report.warn(at, f"relay {r.name}: keypair {kpname}: {msg}")
                    kp = done[key]
                    if kp is not None and explicit and not _names_cover(kp["names"],
                                                                         kpname):
                        report.warn(at, f"relay {r.name}: keypair {kpname}: its certificate "
                                        "names " + ", ".join(kp["names"] or ["nothing"])
                                        + f", not {kpname}")
                if done[key] is not None:
                    kps.append(done[key])
            m["listeners"].append({"address": lst.address, "port": lst.port,
                                   "keypairs": kps})
        file_opts = []
        if listeners and opts.client_ca:
            file_opts.append(("client_ca", ("client", "ca"), opts.client_ca, "client ca"))
        if fwd_tls and opts.ca_file:
            file_opts.append(("ca", ("ca", "file"), opts.ca_file, "ca file"))
        for field, first, path, what in file_opts:
            try:
                m[field] = _bundle(path)
            except Problem as e:
                report.error(places.option(proto, first, rw), f"relay {r.name}: {what}: {e}")
        if fwd_tls and opts.ca_cert and opts.ca_key:
            try:
                m["ca_cert"], m["ca_key"] = _inspection_ca(opts.ca_cert, opts.ca_key,
                                                           opts.ca_password or "", now)
            except Problem as e:
                report.error(places.option(proto, ("ca", "key"), rw),
                             f"relay {r.name}: ca cert/ca key: {e}")
        # relayd.conf(5): all four conditions make TLS inspection
        m["inspect"] = bool(listeners and m["ca_cert"] and m["ca_key"] and any(
            f.tls and f.destination for f in r.forward))
        out[r.name] = m
    return out


def _names_cover(carried: list[str], name: str) -> bool:
    name = name.lower()
    return any(relay_tls._name_matches(n.lower(), name) for n in carried)


def describe(material: dict) -> list[str]:
    """One line per keypair of each TLS listener, for people (-nv): the
    names its certificate carries and when it expires."""
    lines = []
    for rname, m in material.items():
        for lst in m["listeners"]:
            for i, kp in enumerate(lst["keypairs"]):
                until = datetime.datetime.fromtimestamp(kp["not_after"], datetime.timezone.utc)
                lines.append(f"relay {rname}: listen on {lst['address']} port {lst['port']} "
                             f"tls: keypair {kp['name']}" + (" (default)" if i == 0 else "")
                             + ": names " + (", ".join(kp["names"]) or "nothing")
                             + f"; valid until {_stamp(until)}")
    return lines


def material(config: model.Config, directory: str | None = None,
             now: datetime.datetime | None = None) -> dict:
    """Every relay's TLS material for a Config loaded already, or
    ConfigError with every problem as `file:line:col: message` at the
    relay's place (the options' places went with the load)."""
    report = Reporter()
    check_options(config, report)
    out = collect(config, report, None, directory, now)
    report.raise_if_errors()
    return out


__all__ = ["SSL_DIR", "ENV_SSL_DIR", "ConfigError", "check_options", "collect", "describe",
           "keypair", "material", "names", "ssl_dir"]
