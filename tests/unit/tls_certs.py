"""Certificates the TLS tests make with `cryptography`, and a TLS handshake
over memory BIOs (no socket, no network)."""

from __future__ import annotations

import datetime
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def key():
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(k, password: bytes | None = None) -> bytes:
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def cert(cn: str, sans=(), k=None, issuer=None, issuer_key=None, before=-DAY, after=30 * DAY,
         ca: bool = False):
    """A certificate for cn (and DNS names sans), valid from NOW+before to
    NOW+after; self-signed unless issuer/issuer_key are given."""
    k = k or key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.subject if issuer is not None else name)
         .public_key(k.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW + before).not_valid_after(NOW + after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]),
                            critical=False)
    c = b.sign(issuer_key or k, hashes.SHA256())
    return c, k


def pem(c) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def install(directory, stem: str, c, k, mode: int = 0o600) -> None:
    """Put a keypair where relayd looks: DIR/STEM.crt, DIR/private/STEM.key."""
    os.makedirs(os.path.join(directory, "private"), exist_ok=True)
    with open(os.path.join(directory, f"{stem}.crt"), "wb") as f:
        f.write(pem(c))
    path = os.path.join(directory, "private", f"{stem}.key")
    with open(path, "wb") as f:
        f.write(key_pem(k))
    os.chmod(path, mode)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              server_hostname: str | None = None):
    """A full handshake between two SSLObjects over memory BIOs; returns
    (server SSLObject, client SSLObject) or raises the first side's SSLError."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    done = {"s": False, "c": False}
    for _ in range(20):
        for tag, obj in (("c", client), ("s", server)):
            if done[tag]:
                continue
            try:
                obj.do_handshake()
                done[tag] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server's verdict on a client certificate arrives
            # after the client's handshake ends; one exchange of data tells it
            client.write(b"ping")
            s_in.write(c_out.read())
            assert server.read(4) == b"ping"
            server.write(b"pong")
            c_in.write(s_out.read())
            assert client.read(4) == b"pong"
            return server, client
    raise AssertionError("handshake did not finish")


def peer_cn(obj) -> str:
    der = obj.getpeercert(binary_form=True)
    c = x509.load_der_x509_certificate(der)
    return c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
