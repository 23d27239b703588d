"""The relays, end to end: the daemon in the director namespace relays real
client connections to real backends (tests/lab.Farm: HTTP servers that
answer their own name, and a TCP echo server), in every way the issue asks.

- the prefork processes run as the daemon's user, with no capability, and
  share the connections (SO_REUSEPORT sockets the parent bound);
- roundrobin spreads new sessions over the backends that are up, with no
  failed request; source-hash keeps a client on one backend;
- a backend hce marks down gets no new session while traffic flows, and
  none fails; it comes back when it is up again;
- 20 MB through a TCP relay and back, half-closed by the client, arrive
  intact (sha256 both ways) through a backend that echoes;
- `show relays` counts the sessions, `show sessions` lists a running one;
- a reload under load that adds a relay refuses no connection on the
  relay it keeps, and the new relay serves at once.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest

from lab import ECHO_SERVER, PYTHON, Farm, Lab, in_netns, usable

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not usable("ip"), reason="needs root and ip")]

VIP = Farm.director_client_addr          # the relays listen on the director's address

CONFIG = """
socket "{socket}"
interval 1
timeout 500
table <web> {{ 198.51.100.11 198.51.100.12 198.51.100.13 }}
table <echo> {{ 198.51.100.11 }}
relay www {{
	listen on 192.0.2.1 port 8080
	forward to <web> port 80 mode {mode} check http "/" code 200
}}
relay echo {{
	listen on 192.0.2.1 port 7007
	forward to <echo> port 7 check tcp
}}
"""

# sends N bytes of a seeded stream, half-closes, reads the echo to EOF;
# prints both digests and the byte counts
BULK_CLIENT = r"""
import hashlib, json, random, socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=30)
sent, got = hashlib.sha256(), hashlib.sha256()
count = [0]
def reader():
    while True:
        d = s.recv(1 << 16)
        if not d:
            break
        got.update(d); count[0] += len(d)
t = threading.Thread(target=reader); t.start()
rng = random.Random(7)
left = n
while left:
    chunk = rng.randbytes(min(left, 1 << 16))
    s.sendall(chunk); sent.update(chunk); left -= len(chunk)
s.shutdown(socket.SHUT_WR)
t.join(60)
print(json.dumps({"sent": sent.hexdigest(), "got": got.hexdigest(), "n": n, "back": count[0]}))
"""


def relay_pids(d) -> list[int]:
    from lab import children_of, cmdline
    out = []
    for pid in children_of(d.pid):
        argv = cmdline(pid)
        if "--role" in argv and argv[argv.index("--role") + 1] == "relay":
            out.append(pid)
    return out


def start(lab, mode="roundrobin", backends=3):
    farm = Farm(lab, backends=backends, sources=4)
    b1 = farm.backends[0]
    echo = lab.spawn(PYTHON, "-c", ECHO_SERVER, farm.addr[b1], ns=b1,
                     stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "ready"
    d = farm.daemon(CONFIG.replace("{mode}", mode))
    d.wait_for(lambda: sum(h["status"] == "up" for h in d.json("show hosts")["hosts"])
               == backends + 1, what="every host up")
    return farm, d


def test_relays_share_out_new_sessions_and_skip_a_down_host():
    with Lab("rl") as lab:
        farm, d = start(lab)
        pids = relay_pids(d)
        assert len(pids) == 3                               # prefork 3, relayd's default
        import pwd
        user = pwd.getpwnam("_hoststated")
        from lab import wait_dropped
        for pid in pids:
            st = wait_dropped(pid)
            assert set(st["Uid"].split()) == {str(user.pw_uid)}
            assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0

        r = farm.requests(VIP, 60, port=8080)
        assert r["failed"] == 0, r["errors"]
        assert set(r["counts"]) == {"b1", "b2", "b3"}, r["counts"]
        # each process round-robins on its own: 60 sessions over 3 hosts
        assert all(n >= 10 for n in r["counts"].values()), r["counts"]

        # b2 goes down while traffic flows: no session fails, none reaches it after
        traffic = farm.traffic(VIP, 6.0, port=8080)
        time.sleep(1.0)
        # b2 refuses new connections (a reset, as a stopped server's port),
        # while the requests it holds are answered: killing the server would
        # also cut a request in flight, which no TCP relay can replay
        b2 = farm.backends[1]
        farm.ns(b2, "nft", "add table inet refuse { chain in { type filter hook input "
                           "priority 0; tcp dport 80 ct state new reject with tcp reset; }; }")
        d.wait_for(lambda: any(h["name"] == "198.51.100.12" and h["status"] == "down"
                               for h in d.json("show hosts")["hosts"]), what="b2 down")
        seen = farm.finish(traffic)
        # the requests b2 refused between its stop and its down: retried on another host
        assert seen["failed"] == 0, seen["errors"]
        r = farm.requests(VIP, 30, port=8080)
        assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b3"}, r

        farm.ns(b2, "nft", "delete", "table", "inet", "refuse")
        d.wait_for(lambda: all(h["status"] == "up" for h in d.json("show hosts")["hosts"]),
                   what="b2 up again")
        r = farm.requests(VIP, 30, port=8080)
        assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b2", "b3"}, r

        relays = {r["name"]: r for r in d.json("show relays")["relays"]}
        d.wait_for(lambda: {r["name"]: r for r in d.json("show relays")["relays"]}
                   ["www"]["total"] >= 120, what="the sessions counted")
        www = {r["name"]: r for r in d.json("show relays")["relays"]}["www"]
        assert www["status"] == "active" and www["processes"] == 3
        assert relays["echo"]["status"] == "active"
        text = d.ctl("show", "relays").stdout
        assert "total: " in text and "last: " in text and "average: " in text


def test_source_hash_keeps_a_client_on_one_backend():
    with Lab("rl") as lab:
        farm, d = start(lab, mode="source-hash")
        seen = {}
        for src in ("192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6"):
            r = farm.requests(VIP, 12, port=8080, sources=[src])
            assert r["failed"] == 0, r["errors"]
            assert len(r["counts"]) == 1, (src, r["counts"])   # whichever process accepted
            seen[src] = next(iter(r["counts"]))
        assert len(set(seen.values())) >= 2, seen           # and clients are spread


def test_bulk_data_arrives_intact_and_half_close_passes_through():
    with Lab("rl") as lab:
        farm, d = start(lab)
        n = 20 << 20
        r = subprocess.run(in_netns(farm.client, PYTHON, "-c", BULK_CLIENT, VIP, "7007", str(n)),
                           capture_output=True, text=True, timeout=120, check=True)
        out = json.loads(r.stdout)
        assert out["back"] == n and out["got"] == out["sent"], out


def test_show_sessions_lists_a_running_session():
    with Lab("rl") as lab:
        farm, d = start(lab)
        hold = lab.spawn(*in_netns(farm.client, PYTHON, "-c",
                                   "import socket, time\n"
                                   "s = socket.create_connection(('192.0.2.1', 7007))\n"
                                   "s.sendall(b'x'); s.recv(1); print('ok', flush=True)\n"
                                   "time.sleep(60)\n"), stdout=subprocess.PIPE, text=True)
        assert hold.stdout.readline().strip() == "ok"
        sessions = d.json("show sessions")["sessions"]
        assert len(sessions) == 1, sessions
        s = sessions[0]
        assert (s["relay_name"], s["client"], s["backend"], s["backend_port"], s["status"]) == \
            ("echo", "192.0.2.2", "198.51.100.11", 7, "running")
        assert s["pid"] in relay_pids(d)
        text = d.ctl("show", "sessions").stdout
        assert "192.0.2.2:" in text and "-> 198.51.100.11:7\tRUNNING" in text, text
        lab.kill(hold)


def test_reload_under_load_adds_a_relay_and_refuses_nothing():
    with Lab("rl") as lab:
        farm, d = start(lab)
        traffic = farm.traffic(VIP, 5.0, port=8080)
        time.sleep(1.0)
        conf = d.conf.read_text() + (
            "relay more {\n\tlisten on 192.0.2.1 port 8081\n"
            "\tforward to <web> port 80 check http \"/\" code 200\n}\n")
        d.conf.write_text(conf)
        r = d.ctl("reload")
        assert r.returncode == 0, r.stderr
        seen = farm.finish(traffic)
        assert seen["failed"] == 0, seen["errors"]
        assert sum(seen["counts"].values()) > 50, seen["counts"]
        # <web> with the same check is the same table (relayd's table_inherit):
        # its hosts are up already, the new relay serves at once
        r = farm.requests(VIP, 9, port=8081)
        assert r["failed"] == 0 and set(r["counts"]) == {"b1", "b2", "b3"}, r
        # a kept listener may not turn UDP (or TLS): its socket is kept, a restart does that
        d.conf.write_text("dns protocol dnsp\n" + conf.replace(
            "listen on 192.0.2.1 port 8080", "listen on 192.0.2.1 port 8080\n\tprotocol dnsp"))
        r = d.ctl("reload")
        assert r.returncode != 0 and "changes between TCP, TLS and UDP" in r.stderr + r.stdout, r
        r = farm.requests(VIP, 3, port=8080)
        assert r["failed"] == 0, r


def test_a_backend_killed_mid_session_ends_that_session_only_and_is_logged():
    # its kernel closes the backend's side (FIN): passed on to the client as
    # a half-close, and the session ends when the client closes too
    with Lab("rl") as lab:
        farm = Farm(lab, backends=3, sources=0)
        b1 = farm.backends[0]
        echo = lab.spawn(PYTHON, "-c", ECHO_SERVER, farm.addr[b1], ns=b1,
                         stdout=subprocess.PIPE, text=True)
        assert echo.stdout.readline().strip() == "ready"
        d = farm.daemon("log connection\n" + CONFIG.replace("{mode}", "roundrobin"))
        d.wait_for(lambda: sum(h["status"] == "up" for h in d.json("show hosts")["hosts"]) == 4,
                   what="every host up")
        hold = lab.spawn(*in_netns(farm.client, PYTHON, "-c",
                                   "import socket, sys\n"
                                   "s = socket.create_connection(('192.0.2.1', 7007))\n"
                                   "s.sendall(b'x'); s.recv(1); print('open', flush=True)\n"
                                   "try:\n"
                                   "    print('eof' if s.recv(10) == b'' else 'data', flush=True)\n"
                                   "except ConnectionResetError:\n"
                                   "    print('reset', flush=True)\n"),
                         stdout=subprocess.PIPE, text=True)
        assert hold.stdout.readline().strip() == "open"
        assert len(d.json("show sessions")["sessions"]) == 1
        lab.kill(echo)                      # SIGKILL: the kernel resets its connections
        assert hold.stdout.readline().strip() in ("eof", "reset")
        d.wait_for(lambda: d.json("show sessions")["sessions"] == [], what="the session gone")
        # the other relay serves on
        r = farm.requests(VIP, 6, port=8080)
        assert r["failed"] == 0, r
        d.wait_for(lambda: "relay echo, session" in d.read_log(), what="the session logged")
        line = next(ln for ln in d.read_log().splitlines() if "relay echo, session" in ln)
        assert "192.0.2.2:" in line and "-> 198.51.100.11:7" in line, line
        assert "Traceback" not in d.read_log()
