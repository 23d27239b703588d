"""relay_tls: relayd's tls options onto ssl, and real handshakes over memory
BIOs with certificates made here (no network)."""

from __future__ import annotations

import ctypes
import os
import ssl

import pytest

from hoststated import relay_tls
from tls_certs import DAY, cert, handshake, key_pem, peer_cn, pem


def kp(name, sans=(), c_k=None):
    c, k = c_k or cert(name, sans or (name,))
    return {"name": name, "cert": pem(c), "key": key_pem(k), "names": list(sans or (name,))}


def material(*keypairs, client_ca=None):
    return {"listeners": [{"address": "192.0.2.1", "port": 443, "keypairs": list(keypairs)}],
            "ca": None, "ca_cert": None, "ca_key": None, "client_ca": client_ca}


def trusting(*certs_pem: bytes, tls_opts=()) -> ssl.SSLContext:
    """A client that trusts these certificates (names not checked)."""
    return relay_tls.client_context(tls_opts, b"".join(certs_pem))


# --- the options ----------------------------------------------------------------

def test_words_take_quotes_off():
    assert relay_tls.words('ca key "/k y" password "p\\"w"') == ["ca", "key", "/k y",
                                                                "password", 'p"w']
    assert relay_tls.words('no "tlsv1.0"') == ["no", "tlsv1.0"]


def test_defaults_are_relayds():
    opts, problems = relay_tls.parse(())
    assert problems == []
    assert opts.versions == {"tlsv1.2", "tlsv1.3"}
    assert opts.ciphers == "HIGH:!aNULL" and opts.tickets and opts.server_preference
    assert not opts.client_renegotiation and opts.curve is None and not opts.edh


def test_versions_map_to_a_minimum_and_a_maximum():
    opts, _ = relay_tls.parse(('"tlsv1"', 'no "tlsv1.0"'))
    assert opts.versions == {"tlsv1.1", "tlsv1.2", "tlsv1.3"}
    assert (opts.minimum, opts.maximum) == (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_3)
    opts, _ = relay_tls.parse(('no "tlsv1.2"',))
    assert opts.minimum == opts.maximum == ssl.TLSVersion.TLSv1_3


def test_libtls_protocol_strings():
    p = relay_tls.parse_protocols
    assert p("tlsv1.2,tlsv1.3") == p("default") == p("secure") == {"tlsv1.2", "tlsv1.3"}
    assert p("all") == p("legacy") == p("tlsv1") == set(relay_tls.VERSIONS)
    assert p("!tlsv1.0:!tlsv1.1") == {"tlsv1.2", "tlsv1.3"}
    assert p("TLSv1.3") == {"tlsv1.3"}
    with pytest.raises(ValueError, match="invalid TLS protocol: sslv3"):
        p("tlsv1.2,sslv3")


@pytest.mark.parametrize("opts, message", [
    (('"sslv3"',), "sslv3: Python's ssl (OpenSSL 3) has no SSLv3"),
    (('"tlsv1.0"', 'no "tlsv1.1"'), "have a gap"),
    (('no "tlsv1.2"', 'no "tlsv1.3"'), "no TLS version is left enabled"),
    (('ecdhe "brainpoolP256r1,X25519"',), "is not among OpenSSL's default groups"),
    (('ecdhe "no-such-curve"',), "OpenSSL knows no such curve"),
    (('ciphers "NOTHING-LIKE-A-CIPHER"',), "OpenSSL knows no cipher in it"),
    (('edh params "legacy"',), "1024-bit DH is below OpenSSL's security level"),
    (('edh params "512"',), "invalid edh params: 512"),
    (('ca cert "/c"',), "tls ca cert without ca key"),
])
def test_what_python_ssl_cannot_do_is_refused(opts, message):
    problems = relay_tls.check(opts)
    assert any(message in m for _, m in problems), problems
    assert not all(relay_tls.is_warning(m) for _, m in problems)
    # (-n refuses these; a relay handed them anyway does not start)
    with pytest.raises((ValueError, ssl.SSLError)):
        relay_tls.server_context(material(kp("a")), opts)


def test_a_curve_list_within_the_defaults_is_a_warning():
    problems = relay_tls.check(('ecdhe "P-384,P-256,X25519"',))
    assert len(problems) == 1 and relay_tls.is_warning(problems[0][1])
    assert relay_tls.options(('ecdhe "P-384,P-256,X25519"',)).curve is None
    assert relay_tls.check(('ecdhe "P-384"', 'ciphers "secure"', 'ecdhe "default"')) == []


def test_context_options():
    ctx = relay_tls.server_context(material(kp("a")), ('no session tickets',
                                                       'no "cipher-server-preference"'))
    assert ctx.options & ssl.OP_NO_TICKET and ctx.num_tickets == 0
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_2,
                                                          ssl.TLSVersion.TLSv1_3)
    ctx = relay_tls.server_context(material(kp("a")), ('"client-renegotiation"',))
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE and ctx.num_tickets > 0
    assert not ctx.options & ssl.OP_NO_RENEGOTIATION


# --- handshakes -------------------------------------------------------------------

def test_server_serves_its_keypair():
    a = kp("a.example")
    server, client = handshake(relay_tls.server_context(material(a), ()), trusting(a["cert"]))
    assert peer_cn(client) == "a.example"
    assert client.version() == "TLSv1.3"


def test_sni_chooses_among_keypairs():
    default, exact, wild = (kp("default.example"), kp("www.example", ["www.example"]),
                            kp("wild", ["*.apps.example"]))
    ctx = relay_tls.server_context(material(default, exact, wild), ())
    client = trusting(default["cert"], exact["cert"], wild["cert"])
    for sni, want in [("www.example", "www.example"), ("WWW.Example.", "www.example"),
                      ("x.apps.example", "wild"), ("a.b.apps.example", "default.example"),
                      ("unknown.example", "default.example"), (None, "default.example")]:
        _, c = handshake(ctx, client, sni)
        assert peer_cn(c) == want, sni


def test_exact_name_wins_over_a_wildcard():
    wild = kp("wild", ["*.example"])
    exact = kp("exact", ["a.example"])
    _, c = handshake(relay_tls.server_context(material(wild, exact), ()),
                     trusting(wild["cert"], exact["cert"]), "a.example")
    assert peer_cn(c) == "exact"


def test_versions_are_enforced():
    a = kp("a")
    ctx = relay_tls.server_context(material(a), ('no "tlsv1.2"',))
    old = trusting(a["cert"], tls_opts=('no "tlsv1.3"',))
    with pytest.raises(ssl.SSLError):
        handshake(ctx, old)
    _, c = handshake(relay_tls.server_context(material(a), ()), old)
    assert c.version() == "TLSv1.2"


def test_one_curve_is_the_only_group():
    a = kp("a")
    ctx = relay_tls.server_context(material(a), ('ecdhe "P-384"',))
    other = trusting(a["cert"])
    other.set_ecdh_curve("prime256v1")
    with pytest.raises(ssl.SSLError):
        handshake(ctx, other)
    same = trusting(a["cert"])
    same.set_ecdh_curve("secp384r1")
    handshake(ctx, same)


def test_edh_serves_dhe_ciphers():
    from cryptography.hazmat.primitives.asymmetric import rsa
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    a = kp("rsa", c_k=cert("rsa", ["rsa"], k=k))
    dhe = ('no "tlsv1.3"', 'ciphers "DHE-RSA-AES128-GCM-SHA256"')
    client = trusting(a["cert"], tls_opts=dhe)
    with pytest.raises(ssl.SSLError):
        handshake(relay_tls.server_context(material(a), dhe), client)
    _, c = handshake(relay_tls.server_context(material(a), dhe + ("edh",)), client)
    assert c.cipher()[0] == "DHE-RSA-AES128-GCM-SHA256"


def test_client_certificates_with_client_ca():
    ca, ca_key = cert("client CA", ca=True)
    ok, ok_key = cert("alice", issuer=ca, issuer_key=ca_key)
    stranger, stranger_key = cert("mallory")
    a = kp("a")
    ctx = relay_tls.server_context(material(a, client_ca=pem(ca)), ())

    def client_with(c=None, k=None):
        cl = trusting(a["cert"])
        if c is not None:
            relay_tls._load_from_memory(cl.load_cert_chain, pem(c) + key_pem(k))
        return cl
    server, _ = handshake(ctx, client_with(ok, ok_key))
    assert server.getpeercert()["subject"] == ((("commonName", "alice"),),)
    for cl in (client_with(), client_with(stranger, stranger_key)):
        with pytest.raises(ssl.SSLError):
            handshake(ctx, cl)


def test_forward_with_tls_verifies_with_ca_file_and_sends_sni():
    ca, ca_key = cert("backend CA", ca=True)
    backend, backend_key = cert("backend.example", ["backend.example"], issuer=ca,
                                issuer_key=ca_key)
    rogue = kp("backend.example")            # same name, not signed by the CA
    seen = []
    server = relay_tls.server_context(material(kp("x", c_k=(backend, backend_key))), ())
    server.sni_callback = lambda obj, name, ctx: seen.append(name)
    client = relay_tls.client_context((), pem(ca))
    _, c = handshake(server, client, relay_tls.sni_name("backend.example"))
    assert seen == ["backend.example"] and peer_cn(c) == "backend.example"
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(relay_tls.server_context(material(rogue), ()), client, "backend.example")
    # relayd checks no name; check_hostname=True does
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, relay_tls.client_context((), pem(ca), check_hostname=True),
                  "other.example")
    handshake(server, client, "other.example")
    # without a ca file nothing is verified (relayd: noverifycert)
    handshake(relay_tls.server_context(material(rogue), ()), relay_tls.client_context(()))


def test_sni_name_is_never_an_address():
    assert relay_tls.sni_name("192.0.2.7") is None
    assert relay_tls.sni_name("2001:db8::1") is None
    assert relay_tls.sni_name("web.example.") == "web.example"
    assert relay_tls.sni_name(None) is None


def test_an_expired_certificate_fails_the_clients_verification():
    a = kp("old", c_k=cert("old", ["old"], before=-3 * DAY, after=-DAY))
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        handshake(relay_tls.server_context(material(a), ()), trusting(a["cert"]))


def test_a_relay_process_loads_keys_with_no_file_and_no_privilege():
    """As a relay runs: another user, not dumpable, no key file anywhere;
    the contexts come from the material's bytes (memfd) alone."""
    a, b = kp("a", ["a"]), kp("b", ["b"])
    pid = os.fork()
    if pid == 0:                                  # the child: exit status is the verdict
        code = 1
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)   # PR_SET_DUMPABLE 0
            ctx = relay_tls.server_context(material(a, b), ())
            _, c = handshake(ctx, trusting(a["cert"], b["cert"]), "b")
            code = 0 if peer_cn(c) == "b" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_inspection_reissues_the_upstream_certificate():
    """relayd's ssl_update_certificate: the client sees the upstream's
    subject and names, with the relay's key, issued by the inspection CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    up_ca, up_ca_key = cert("public CA", ca=True)
    upstream, _ = cert("shop.example", ["shop.example", "www.shop.example"], issuer=up_ca,
                       issuer_key=up_ca_key)
    ca, ca_key = cert("inspection CA", ca=True)
    relay_kp = kp("relay")
    m = dict(material(relay_kp), ca_cert=pem(ca), ca_key=key_pem(ca_key))
    inspector = relay_tls.Inspector(m, ())
    der = upstream.public_bytes(serialization.Encoding.DER)
    forged = x509.load_pem_x509_certificate(inspector.certificate(der))
    assert forged.subject == upstream.subject and forged.issuer == ca.subject
    san = forged.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["shop.example", "www.shop.example"]
    relay_pub = x509.load_pem_x509_certificate(relay_kp["cert"]).public_key()
    assert forged.public_key() == relay_pub
    # a client that trusts the inspection CA accepts it, names checked
    client = relay_tls.client_context((), pem(ca), check_hostname=True)
    ctx = inspector.context(der)
    _, c = handshake(ctx, client, "www.shop.example")
    assert peer_cn(c) == "shop.example"
    assert inspector.context(der) is ctx                   # kept, not signed again
    # one that trusts only the public CA does not
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ctx, relay_tls.client_context((), pem(up_ca)), "shop.example")
    with pytest.raises(ValueError):
        relay_tls.Inspector(material(relay_kp), ())
