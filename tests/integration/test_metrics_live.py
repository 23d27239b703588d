"""The metrics endpoint end to end: the real daemon in a namespace with
`metrics listen on`, a real Prometheus (Debian's package) scraping it, its
HTTP API queried for the series; a backend taken down changes the value.
Then bad input on the endpoint (a POST, a huge head, more idle clients than
its budget): each gets a clear reply or is closed, and the daemon goes on
checking.

    lb 198.51.100.1 (hoststated, metrics on 127.0.0.1:9469, prometheus on
    127.0.0.1:9090) ---veth--- 198.51.100.11 (HTTP 200), .12 (nothing)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import PYTHON, wait_for  # noqa: E402
from conftest import root_ok  # noqa: E402
from test_daemon import CONFIG, DOWN, UP  # noqa: E402

PROMETHEUS = shutil.which("prometheus")

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not root_ok(), reason="needs root and iproute2"),
              pytest.mark.skipif(PROMETHEUS is None,
                                 reason="needs prometheus (tools/apt/core.txt)")]

METRICS = ("127.0.0.1", 9469)
PROM = "127.0.0.1:9090"
# (interval 1 and timeout 500: CONFIG's)
MCONFIG = CONFIG + f"metrics listen on {METRICS[0]} port {METRICS[1]}\n"

PROM_CONFIG = f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: hoststated
    static_configs:
      - targets: ['{METRICS[0]}:{METRICS[1]}']
"""

# argv: mode ...; run in the namespace. "get URL": the body. "raw": send
# stdin's bytes to the metrics port, print the reply (up to 4 KiB, hex) once the
# server closes. "flood N": N idle connections; prints how many the server
# closed within 3 s, then holds the rest until stdin closes.
CLIENT = r"""
import select, socket, sys, time, urllib.request
mode = sys.argv[1]
addr = (sys.argv[2], int(sys.argv[3]))
if mode == "get":
    print(urllib.request.urlopen(sys.argv[4], timeout=5).read().decode())
elif mode == "raw":
    s = socket.create_connection(addr, timeout=10)
    try:
        s.sendall(sys.stdin.buffer.read())
    except OSError:
        pass
    out = b""
    try:
        while len(out) < 4096:
            d = s.recv(4096)
            if not d:
                break
            out += d
    except OSError:
        pass
    print(out[:4096].hex())
elif mode == "flood":
    conns = [socket.create_connection(addr, timeout=10) for _ in range(int(sys.argv[4]))]
    closed, deadline = set(), time.monotonic() + 3
    while time.monotonic() < deadline:
        r, _, _ = select.select([c for c in conns if c not in closed], [], [], 0.2)
        for c in r:
            try:
                if not c.recv(1):
                    closed.add(c)
            except OSError:
                closed.add(c)
    print(len(closed), flush=True)
    sys.stdin.read()
"""


def client(ns: str, *args: str, timeout: float = 30, stdin: bytes = b"") -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c", CLIENT, *args],
                       capture_output=True, input=stdin, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


def query(ns: str, q: str) -> list[dict]:
    """Prometheus' instant query API: the result vector."""
    from urllib.parse import quote
    body = client(ns, "get", *METRICS[:1], "0", f"http://{PROM}/api/v1/query?query={quote(q)}")
    data = json.loads(body)
    assert data["status"] == "success", data
    return data["data"]["result"]


def value_of(ns: str, q: str) -> dict[str, float]:
    """host label -> value of an instant query's series."""
    return {r["metric"].get("host", ""): float(r["value"][1]) for r in query(ns, q)}


def raw(ns: str, data: bytes) -> bytes:
    return bytes.fromhex(client(ns, "raw", *METRICS[:1], str(METRICS[1]), stdin=data))


def test_prometheus_scrapes_the_daemon(lab):
    lb, be = lab.netns("lb"), lab.netns("be")
    lab.veth(lb, "198.51.100.1/24", be, ["198.51.100.11/24", "198.51.100.12/24",
                                         "198.51.100.13/24"])
    backend = lab.http(be, UP, 80)
    d = lab.daemon(lb, MCONFIG)
    d.wait_for(lambda: d.host(UP)["status"] == "up" and d.host(DOWN)["status"] == "down",
               what="first checks")
    hce = d.roles()["hce"]

    # the endpoint itself, before Prometheus
    text = client(lb, "get", *METRICS[:1], "0", f"http://{METRICS[0]}:{METRICS[1]}/metrics")
    assert f'hoststated_host_up{{table="web:80",host="{UP}",id="1"}} 1' in text, \
        [ln for ln in text.splitlines() if ln.startswith("hoststated_host_")]
    assert "# TYPE hoststated_host_up gauge" in text

    conf = lab.write("prometheus.yml", PROM_CONFIG)
    data = lab.tmp / "prometheus-data"
    data.mkdir()
    with open(lab.tmp / "prometheus.log", "w") as plog:
        prom = lab.spawn(PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={data}",
                         f"--web.listen-address={PROM}", "--log.level=warn", ns=lb,
                         stdout=plog, stderr=subprocess.STDOUT)
    try:
        def plog_tail() -> str:
            return (lab.tmp / "prometheus.log").read_text()[-2000:]
        # Prometheus up and its scrape of hoststated healthy
        wait_for(lambda: [r for r in query(lb, 'up{job="hoststated"}')
                          if r["value"][1] == "1"], 60,
                 what=f"a successful scrape (prometheus log: {plog_tail()})")
        wait_for(lambda: value_of(lb, "hoststated_host_up") == {
            UP: 1.0, DOWN: 0.0, "198.51.100.13": 0.0}, 30, what="hoststated_host_up")
        # the series a query returns carry their labels
        (row,) = query(lb, f'hoststated_host_state{{host="{UP}"}}')
        assert row["metric"]["state"] == "up" and row["metric"]["table"] == "web:80"
        assert row["metric"]["job"] == "hoststated"
        (gen,) = query(lb, "hoststated_config_generation")
        assert gen["value"][1] == "1"
        checks = float(query(lb, f'hoststated_host_checks_total{{host="{UP}"}}')[0]["value"][1])
        assert checks >= 1
        assert query(lb, 'hoststated_table_state{table="web:80",state="active"}')
        assert query(lb, 'hoststated_redirect_state{redirect="www",state="active"}')
        assert query(lb, 'hoststated_build_info')

        # a backend goes down: the value follows
        lab.stop(backend)
        wait_for(lambda: value_of(lb, f'hoststated_host_up{{host="{UP}"}}') == {UP: 0.0}, 30,
                 what="the stopped backend's host_up at 0")
        wait_for(lambda: [r["metric"]["state"] for r in
                          query(lb, f'hoststated_host_state{{host="{UP}"}}')] == ["down"], 30,
                 what="its state series 'down' only")
        assert query(lb, 'hoststated_redirect_state{redirect="www",state="down"}') or \
            query(lb, 'hoststated_redirect_state{redirect="www",state="backup"}')
        # a reload: counted, and the generation moves
        assert d.ctl("reload").returncode == 0
        wait_for(lambda: query(lb, 'hoststated_reloads_total{result="ok"}')[0]["value"][1] == "1"
                 and query(lb, "hoststated_config_generation")[0]["value"][1] == "2", 30,
                 what="the reload in the metrics")

        # --- bad input on the endpoint ---------------------------------------
        reply = raw(lb, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in reply
        assert raw(lb, b"GET /etc/passwd HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 404 ")
        reply = raw(lb, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100000 + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 431 ") or reply == b"", reply[:100]
        assert raw(lb, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n").startswith(
            b"HTTP/1.1 400 ")
        # more idle clients than the budget: the rest are closed at once
        flood = lab.spawn(PYTHON, "-c", CLIENT, "flood", *METRICS[:1], str(METRICS[1]), "200",
                          ns=lb, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        closed = int(flood.stdout.readline())
        assert closed >= 200 - 64, closed
        # the checks go on meanwhile: the backend comes back, the host goes up
        backend = lab.http(be, UP, 80)
        d.wait_for(lambda: d.host(UP)["status"] == "up", 30, what="the host up again")
        flood.stdin.close()
        lab.stop(flood)
        # and once the idle ones are gone, Prometheus sees it too
        wait_for(lambda: value_of(lb, f'hoststated_host_up{{host="{UP}"}}') == {UP: 1.0}, 60,
                 what="host_up back at 1")
        assert os.path.exists(f"/proc/{hce}")
        log = d.read_log()
        assert "Traceback" not in log and "metrics client:" not in log, log[-3000:]
        assert "metrics socket" in log       # the refusals, logged once
    finally:
        lab.stop(prom)


def test_a_metrics_port_taken_stops_the_start_with_one_line(lab):
    lb = lab.netns("lb")
    # something else listens there already
    holder = lab.spawn(PYTHON, "-c", "import socket, sys; s = socket.socket(); "
                       f"s.bind(('{METRICS[0]}', {METRICS[1]})); s.listen(); "
                       "print('ready', flush=True); sys.stdin.read()",
                       ns=lb, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "ready\n"
    d = lab.daemon(lb, MCONFIG, wait=False)
    assert d.proc.wait(30) == 1
    log = d.read_log().strip().splitlines()
    assert log[-1] == (f"hoststated: metrics listen on {METRICS[0]} port {METRICS[1]}: "
                       "Address already in use"), log
    assert not os.path.exists(d.socket)      # the control socket went with the failed start
    holder.stdin.close()
    lab.stop(holder)
