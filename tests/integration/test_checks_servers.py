"""Helpers, no tests: real servers on loopback for the check tests (asyncio, in the test's loop),
and certificates made with cryptography."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Server:
    """A TCP server whose per-connection behaviour is a coroutine
    handler(reader, writer); counts connections and requests seen."""

    def __init__(self, handler, host="127.0.0.1", ssl=None, also=()):
        self.handler = handler
        self.host = host
        self.also = also                 # more addresses, same port
        self.extra = []
        self.locals: list[str] = []      # the address each connection reached
        self.ssl = ssl
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.requests: list[bytes] = []
        self.server = None
        self.port = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._conn, self.host, self.port, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]
        for a in self.also:
            self.extra.append(await asyncio.start_server(self._conn, a, self.port, ssl=self.ssl))
        return self

    async def __aexit__(self, *exc):
        for srv in [self.server] + self.extra:
            srv.close()
            await srv.wait_closed()

    async def _conn(self, reader, writer):
        self.connections += 1
        self.locals.append(writer.get_extra_info("sockname")[0])
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.active -= 1
            writer.close()


def http(status=200, body=b"", headers=b""):
    async def handler(srv, reader, writer):
        req = await reader.readuntil(b"\r\n\r\n")
        srv.requests.append(req)
        writer.write(b"HTTP/1.0 %d X\r\n%sContent-Length: %d\r\n\r\n" % (status, headers, len(body)))
        if not req.startswith(b"HEAD"):
            writer.write(body)
        await writer.drain()
    return handler


def banner(data: bytes):
    async def handler(srv, reader, writer):
        writer.write(data)
        await writer.drain()
        await reader.read(100)
    return handler


async def silent(srv, reader, writer):
    """Accepts and never answers."""
    await asyncio.sleep(30)


def make_ca_and_cert(tmpdir: str, name: str = "127.0.0.1", days: int = 30):
    """A CA and a server certificate for `name` (an IP); returns
    (ca_file, cert_file, key_file)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hoststated test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(name))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = []
    for fname, data in (("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
                        ("cert.pem", cert.public_bytes(serialization.Encoding.PEM)),
                        ("key.pem", key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))):
        p = os.path.join(tmpdir, fname)
        with open(p, "wb") as f:
            f.write(data)
        paths.append(p)
    return tuple(paths)
