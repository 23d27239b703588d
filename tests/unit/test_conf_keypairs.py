"""conf.keypairs: relayd's keypair lookup, the checks at -n and start, and
the material the parent hands the relays; certificates made here."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization

from hoststated import parent, relay_tls
from hoststated.conf import keypairs
from hoststated.conf.errors import ConfigError
from hoststated.conf.load import load
from tls_certs import DAY, cert, handshake, install, key, key_pem, peer_cn, pem

ROOT = Path(__file__).resolve().parents[2]


def conf(tmp_path, tls="", listen="127.0.0.1 port 8443 tls", forward="to 192.0.2.10 port 80",
         protocol=True) -> Path:
    p = tmp_path / "relay.conf"
    proto = f"protocol p {{\n{tls}}}\n" if protocol else ""
    p.write_text(proto + "relay www {\n"
                 f"\tlisten on {listen}\n"
                 + ("\tprotocol p\n" if protocol else "")
                 + f"\tforward {forward}\n}}\nuser \"nobody\"\n")
    return p


@pytest.fixture
def ssldir(tmp_path, monkeypatch):
    d = tmp_path / "ssl"
    (d / "private").mkdir(parents=True)
    monkeypatch.setenv(keypairs.ENV_SSL_DIR, str(d))
    return d


def errors(path, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(str(path), warnings=[], **kw)
    return [str(d) for d in e.value.diagnostics]


def warnings_of(path) -> list[str]:
    told: list = []
    load(str(path), warnings=told)
    return [str(d) for d in told]


# --- the lookup -------------------------------------------------------------

def test_keypair_by_name(tmp_path, ssldir):
    c, k = cert("www.example", ["www.example", "example"])
    install(ssldir, "www.example", c, k)
    p = conf(tmp_path, '\ttls keypair "www.example"\n')
    config = load(str(p), warnings=[])
    m = keypairs.material(config)
    (kp,) = m["www"]["listeners"][0]["keypairs"]
    assert kp["name"] == "www.example" and kp["names"] == ["www.example", "example"]
    assert kp["cert"] == pem(c)
    key_back = serialization.load_pem_private_key(kp["key"], None)
    assert key_back.private_numbers() == k.private_numbers()
    assert kp["not_after"] == int(c.not_valid_after_utc.timestamp())
    assert m["www"]["listeners"][0]["port"] == 8443
    # what the parent sends the relays is plain data
    assert msgpack.unpackb(msgpack.packb(m), raw=False) == m


def test_name_port_comes_before_name(tmp_path, ssldir):
    plain, with_port = cert("plain", ["w"]), cert("with port", ["w"])
    install(ssldir, "w", *plain)
    install(ssldir, "w:8443", *with_port)
    config = load(str(conf(tmp_path, "\ttls keypair w\n")), warnings=[])
    (kp,) = keypairs.material(config)["www"]["listeners"][0]["keypairs"]
    assert kp["cert"] == pem(with_port[0])
    # the certificate found decides the key: w:8443.crt with w.key is no pair
    (ssldir / "private" / "w:8443.key").unlink()
    (msg,) = errors(conf(tmp_path, "\ttls keypair w\n"))
    assert msg == (f"{tmp_path}/relay.conf:2:6: relay www: keypair w: "
                   f"{ssldir}/private/w:8443.key: No such file or directory")


def test_without_keypair_the_address_is_the_name(tmp_path, ssldir):
    p = conf(tmp_path, "")
    (msg,) = errors(p)
    assert msg.startswith(f"{p}:3:1: relay www: listen on 127.0.0.1 port 8443 tls: "
                          "no keypair named by the protocol, so the address is the name: "
                          f"{ssldir}/127.0.0.1.crt: No such file or directory (nor "
                          f"{ssldir}/127.0.0.1:8443.crt)")
    install(ssldir, "127.0.0.1", *cert("127.0.0.1"))
    m = keypairs.material(load(str(p), warnings=[]))
    assert [kp["name"] for kp in m["www"]["listeners"][0]["keypairs"]] == ["127.0.0.1"]


def test_several_keypairs_in_order(tmp_path, ssldir):
    for n in ("first", "second", "third"):
        install(ssldir, n, *cert(n, [f"{n}.example"]))
    p = conf(tmp_path, "\ttls keypair first\n\ttls { keypair second, keypair third }\n")
    m = keypairs.material(load(str(p), warnings=[]))
    kps = m["www"]["listeners"][0]["keypairs"]
    assert [kp["name"] for kp in kps] == ["first", "second", "third"]
    # and the relay's context chooses among them by SNI
    ctx = relay_tls.server_context(m["www"], load(str(p), warnings=[]).protocols[0].tls)
    client = relay_tls.client_context((), b"".join(kp["cert"] for kp in kps))
    _, c = handshake(ctx, client, "third.example")
    assert peer_cn(c) == "third"
    _, c = handshake(ctx, client, "nobody.example")
    assert peer_cn(c) == "first"
    lines = keypairs.describe(m)
    assert len(lines) == 3
    assert lines[0].startswith("relay www: listen on 127.0.0.1 port 8443 tls: keypair first "
                               "(default): names first.example; valid until ")
    assert lines[1].startswith("relay www: listen on 127.0.0.1 port 8443 tls: keypair second: "
                               "names second.example; valid until ")


def test_relays_without_tls_have_no_material(tmp_path, ssldir):
    p = conf(tmp_path, "", listen="127.0.0.1 port 8080")
    assert keypairs.material(load(str(p), warnings=[])) == {}


# --- what fails -----------------------------------------------------------------

def test_key_that_does_not_match(tmp_path, ssldir):
    c, _ = cert("a")
    install(ssldir, "a", c, key())
    (msg,) = errors(conf(tmp_path, "\ttls keypair a\n"))
    assert msg == (f"{tmp_path}/relay.conf:2:6: relay www: keypair a: "
                   f"{ssldir}/private/a.key does not match the certificate "
                   f"{ssldir}/a.crt (another key)")


def test_expired_and_not_yet_valid(tmp_path, ssldir):
    install(ssldir, "old", *cert("old", before=-10 * DAY, after=-DAY))
    install(ssldir, "new", *cert("new", before=DAY, after=10 * DAY))
    msgs = errors(conf(tmp_path, "\ttls keypair old\n\ttls keypair new\n"))
    assert len(msgs) == 2
    assert msgs[0].startswith(f"{tmp_path}/relay.conf:2:6: relay www: keypair old: "
                              f"{ssldir}/old.crt: the certificate expired on ")
    assert msgs[1].startswith(f"{tmp_path}/relay.conf:3:6: relay www: keypair new: "
                              f"{ssldir}/new.crt: the certificate is not valid before ")


def test_missing_unreadable_and_garbage(tmp_path, ssldir):
    (msg,) = errors(conf(tmp_path, "\ttls keypair gone\n"))
    assert msg == (f"{tmp_path}/relay.conf:2:6: relay www: keypair gone: "
                   f"{ssldir}/gone.crt: No such file or directory (nor {ssldir}/gone:8443.crt)")
    (ssldir / "junk.crt").write_text("not a certificate\n")
    (ssldir / "private" / "junk.key").write_bytes(key_pem(key()))
    (msg,) = errors(conf(tmp_path, "\ttls keypair junk\n"))
    assert msg.endswith(f"{ssldir}/junk.crt: no PEM certificate in it")
    c, k = cert("locked")
    install(ssldir, "locked", c, k)
    (ssldir / "private" / "locked.key").write_bytes(key_pem(k, b"secret"))
    (msg,) = errors(conf(tmp_path, "\ttls keypair locked\n"))
    assert "the key is encrypted" in msg
    (ssldir / "dir.crt").mkdir()
    (msg,) = errors(conf(tmp_path, "\ttls keypair dir\n"))
    assert msg.endswith(f"{ssldir}/dir.crt: not a regular file")


def test_no_lookup_reads_no_file(tmp_path, ssldir):
    p = conf(tmp_path, "\ttls keypair gone\n\ttls ca file \"/nonexistent/ca.pem\"\n",
             forward="with tls to 192.0.2.10 port 443")
    assert errors(p)
    load(str(p), lookup=False, warnings=[])


def test_warnings_key_open_to_others_and_names(tmp_path, ssldir):
    install(ssldir, "shop", *cert("shop", ["shop.example"]), mode=0o644)
    ws = warnings_of(conf(tmp_path, "\ttls keypair shop\n"))
    assert f"{tmp_path}/relay.conf:2:6: warning: relay www: keypair shop: " \
           f"{ssldir}/private/shop.key can be read by other users: chmod 600 it" in ws
    assert f"{tmp_path}/relay.conf:2:6: warning: relay www: keypair shop: its " \
           "certificate names shop.example, not shop" in ws


def test_an_option_python_cannot_do_fails_at_its_place(tmp_path, ssldir):
    p = conf(tmp_path, '\ttls { ciphers "HIGH", "sslv3" }\n')
    msgs = errors(p, lookup=False)
    assert msgs == [f"{p}:2:24: protocol p: sslv3: Python's ssl (OpenSSL 3) has no SSLv3"]


# --- CA files -----------------------------------------------------------------------

def test_ca_file_for_forward_with_tls(tmp_path, ssldir):
    install(ssldir, "a", *cert("a"))
    ca, _ = cert("CA", ca=True)
    (tmp_path / "ca.pem").write_bytes(b"# a comment\n" + pem(ca))
    p = conf(tmp_path, f'\ttls keypair a\n\ttls ca file "{tmp_path}/ca.pem"\n',
             forward="with tls to 192.0.2.10 port 443")
    m = keypairs.material(load(str(p), warnings=[]))
    assert m["www"]["ca"] == pem(ca)
    (tmp_path / "ca.pem").write_text("garbage")
    (msg,) = errors(p)
    assert msg == (f"{p}:3:6: relay www: ca file: {tmp_path}/ca.pem: "
                   "no PEM certificate in it")


def test_inspection_ca_is_decrypted(tmp_path, ssldir):
    ca, ca_key = cert("inspection CA", ca=True)
    (tmp_path / "ca.crt").write_bytes(pem(ca))
    (tmp_path / "ca.key").write_bytes(key_pem(ca_key, b"s3cret"))
    (tmp_path / "ca.key").chmod(0o600)
    tls = (f'\ttls ca cert "{tmp_path}/ca.crt"\n'
           f'\ttls ca key "{tmp_path}/ca.key" password "s3cret"\n')
    p = conf(tmp_path, tls, listen="127.0.0.1 port 8080",
             forward="with tls to destination")
    # the relays do not inspect yet (-n refuses it): the material alone
    m = keypairs.material(load(str(p), warnings=[], runnable=False))["www"]
    assert m["ca_cert"] == pem(ca)
    assert serialization.load_pem_private_key(m["ca_key"], None).private_numbers() \
        == ca_key.private_numbers()
    assert not m["inspect"]                  # the listener is not tls
    install(ssldir, "a", *cert("a"))
    p = conf(tmp_path, tls + "\ttls keypair a\n", forward="with tls to destination")
    assert keypairs.material(load(str(p), warnings=[], runnable=False))["www"]["inspect"]
    p = conf(tmp_path, tls, listen="127.0.0.1 port 8080", forward="with tls to destination")
    (msg,) = errors(conf(tmp_path, tls.replace('"s3cret"', '"wrong"'),
                         listen="127.0.0.1 port 8080", forward="with tls to destination"),
                    runnable=False)
    assert msg == (f"{p}:3:6: relay www: ca cert/ca key: {tmp_path}/ca.key: no PEM "
                   "private key in it, or the password is wrong")


def test_client_ca(tmp_path, ssldir):
    install(ssldir, "a", *cert("a"))
    ca, _ = cert("clients", ca=True)
    (tmp_path / "clients.pem").write_bytes(pem(ca))
    p = conf(tmp_path, f'\ttls keypair a\n\ttls client ca "{tmp_path}/clients.pem"\n')
    assert keypairs.material(load(str(p), warnings=[]))["www"]["client_ca"] == pem(ca)


def test_material_errors_at_the_relays_place(tmp_path, ssldir):
    """material() of a loaded Config has no option places: the relay's."""
    install(ssldir, "a", *cert("a"))
    p = conf(tmp_path, "\ttls keypair a\n")
    config = load(str(p), warnings=[])
    (ssldir / "a.crt").unlink()
    with pytest.raises(ConfigError) as e:
        keypairs.material(config)
    assert str(e.value) == (f"{p}:4:1: relay www: keypair a: {ssldir}/a.crt: No such file "
                            f"or directory (nor {ssldir}/a:8443.crt)")


def test_the_parent_reads_each_file_once(tmp_path, ssldir, monkeypatch):
    """At start and at each reload the parent has the material from the
    load that checked the files (before, it read every keypair and CA file
    again: conf.load's check, then keypairs.material); -n reads the same."""
    install(ssldir, "a", *cert("a"))
    ca, _ = cert("backends", ca=True)
    (tmp_path / "ca.pem").write_bytes(pem(ca))
    p = conf(tmp_path, f'\ttls keypair a\n\ttls ca file "{tmp_path}/ca.pem"\n',
             forward="with tls to 192.0.2.10 port 443")
    reads: list[str] = []
    real = keypairs._read

    def counted(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(keypairs, "_read", counted)
    files = [f"{ssldir}/a.crt", f"{ssldir}/private/a.key", f"{tmp_path}/ca.pem"]
    for no_lookup in (False, True):
        reads.clear()
        args = argparse.Namespace(config_file=str(p), defines=None, no_lookup=no_lookup)
        config, tls = parent.load_config(args, warnings=[])
        assert reads == files
        assert tls["www"]["ca"] == pem(ca)
        assert tls == keypairs.material(config)
    reads.clear()
    load(str(p), warnings=[])           # -n
    assert reads == files


# --- hoststated -n ----------------------------------------------------------------------

def run_n(path, ssldir):
    env = {"PATH": "/usr/bin:/bin", keypairs.ENV_SSL_DIR: str(ssldir)}
    return subprocess.run([sys.executable, "-m", "hoststated", "-n", "-f", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)


def test_dash_n_with_a_good_and_a_bad_keypair(tmp_path, ssldir):
    install(ssldir, "good", *cert("good", ["good"]))
    c, _ = cert("bad", ["bad"])
    install(ssldir, "bad", c, key())
    p = conf(tmp_path, "\ttls keypair good\n")
    r = run_n(p, ssldir)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "configuration OK"
    p = conf(tmp_path, "\ttls keypair good\n\ttls keypair bad\n")
    r = run_n(p, ssldir)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{p}:3:6: relay www: keypair bad: {ssldir}/private/bad.key does not match the "
        f"certificate {ssldir}/bad.crt (another key)"]
