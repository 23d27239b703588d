"""The guided tour: `./run demo` (as root).

Builds a lab of network namespaces (a client, a director and three web
servers), runs hoststated in the director with the nftables engine, sends
client traffic to the virtual address, kills a web server and brings it back,
and shows what hoststated and the kernel do at each step. It removes every
namespace and process it made, also when interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# the one netns lab, shared with the tests and the benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lab import Farm, Lab, LabError, host_statuses, run  # noqa: E402
from lab import wait_for as poll  # noqa: E402

BIN = Path(sys.executable).parent
VIP = "203.0.113.10"
CONFIG = """\
# hoststated.conf for the demo: three web servers behind one virtual address
interval 1
timeout 500
log state changes
engine nftables
socket "{socket}"

table <web> {{ 198.51.100.11, 198.51.100.12, 198.51.100.13 }}

redirect "www" {{
	listen on 203.0.113.10 port 80
	forward to <web> port 80 mode roundrobin check http "/" code 200
}}
"""

BOLD, DIM, OFF = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}==> {text}{OFF}", flush=True)


def show(argv: list[str], **kw) -> subprocess.CompletedProcess:
    print(f"{DIM}$ {' '.join(argv)}{OFF}", flush=True)
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    print(textwrap.indent((r.stdout + r.stderr).rstrip(), "  "), flush=True)
    return r


def ctl(socket: str, *args: str) -> list[str]:
    return [str(BIN / "hoststatectl"), "-s", socket, *args]


def host_states(socket: str) -> dict[str, str]:
    r = subprocess.run(ctl(socket, "--json", "show", "hosts"), capture_output=True, text=True)
    return host_statuses(json.loads(r.stdout)) if r.returncode == 0 else {}


def monitors(socket: str) -> int:
    r = subprocess.run(ctl(socket, "--json", "show", "summary"), capture_output=True, text=True)
    return json.loads(r.stdout)["daemon"]["monitors"] if r.returncode == 0 else 0


def wait_for(what: str, predicate, timeout: float) -> float:
    """Seconds until predicate() holds; the demo ends if it never does."""
    start = time.monotonic()
    try:
        poll(predicate, timeout, what=what)
    except AssertionError:
        raise SystemExit(f"demo: gave up waiting for {what} after {timeout:.0f} s") from None
    return time.monotonic() - start


def spread(farm: Farm, n: int) -> None:
    print(f"{DIM}$ (client) {n} HTTP requests to http://{VIP}/, one connection each{OFF}")
    r = farm.requests(VIP, n, timeout=2.0)
    counts = dict(r["counts"], **({"failed": r["failed"]} if r["failed"] else {}))
    width = max(counts.values(), default=1)
    for name in sorted(counts):
        bar = "#" * round(30 * counts[name] / width)
        print(f"  {name:8} {counts[name]:4}  {bar}")


def preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it makes network namespaces): sudo ./run demo")
    for tool in ("ip", "nft", "ps"):
        if shutil.which(tool) is None:
            raise SystemExit(f"demo: {tool} not found; ./run setup installs it")


def tour(lab: Lab, workdir: Path, requests: int) -> None:
    socket = str(workdir / "hoststated.sock")
    conf = workdir / "hoststated.conf"
    conf.write_text(CONFIG.format(socket=socket))

    say("Building the lab: namespaces for a client, a director and three web servers")
    farm = Farm(lab, backends=3, sources=0, name="web{}")
    # the virtual address lives on the director
    farm.ns(farm.director, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    print(f"  client   {farm.client:16} {farm.client_addr}")
    print(f"  director {farm.director:16} {farm.director_client_addr}, "
          f"{farm.director_backend_addr}, VIP {VIP}")
    for b in farm.backends:
        print(f"  {farm.names[b]:8} {b:16} {farm.addr[b]}:80 (python http.server)")

    say("The configuration, in relayd.conf(5)'s language")
    print(textwrap.indent(conf.read_text(), "  "))
    show([str(BIN / "hoststated"), "-n", "-f", str(conf)])

    say("Starting hoststated in the director (foreground, logging to the demo's log)")
    log = open(workdir / "hoststated.log", "w")
    daemon = lab.spawn(str(BIN / "hoststated"), "-d", "-f", str(conf),
                       ns=farm.director, stdout=log, stderr=subprocess.STDOUT)
    took = wait_for("the three web servers to be up",
                    lambda: sorted(host_states(socket).values()) == ["up"] * 3, 30)
    print(f"  all three hosts up {took:.1f} s after start")
    show(["ps", "-o", "pid,user,args", "--ppid", str(daemon.pid), "--pid", str(daemon.pid)])
    show(ctl(socket, "show", "summary"))

    say("What hoststated wrote into the kernel (its own nftables table)")
    show(["ip", "netns", "exec", farm.director, "nft", "list", "ruleset"])

    say("Client traffic to the virtual address spreads over the three servers")
    spread(farm, requests)

    victim = farm.backends[1]
    name, address = farm.names[victim], farm.addr[victim]
    say("Watching state changes as they happen: hoststatectl monitor")
    events = open(workdir / "monitor.txt", "w")
    monitor = lab.spawn(*ctl(socket, "monitor"), stdout=events, stderr=subprocess.STDOUT)
    print(f"{DIM}$ {' '.join(ctl(socket, 'monitor'))} &{OFF}")
    # nothing happens before it is subscribed: show summary counts it then
    wait_for("hoststatectl monitor to subscribe", lambda: monitors(socket) >= 1, 30)

    say(f"Killing {name} ({address}): its health check starts to fail")
    farm.stop_backend(victim)
    took = wait_for(f"{address} to be marked down",
                    lambda: host_states(socket).get(address) == "down", 30)
    print(f"  marked down {took:.1f} s after the kill (check interval 1 s, timeout 500 ms)")
    show(ctl(socket, "show", "hosts"))

    say("Traffic now goes only to the servers that are up")
    spread(farm, requests)

    say(f"Bringing {name} back")
    farm.start_backend(victim)
    took = wait_for(f"{address} to be up again",
                    lambda: host_states(socket).get(address) == "up", 30)
    print(f"  up again {took:.1f} s after the restart")
    spread(farm, requests)

    say("What hoststatectl monitor printed meanwhile")
    lab.stop(monitor)
    events.close()
    print(textwrap.indent((workdir / "monitor.txt").read_text().rstrip(), "  "))

    first = farm.addr[farm.backends[0]]
    say(f"Draining {first} by hand, then enabling it again")
    show(ctl(socket, "host", "disable", first))
    spread(farm, requests)
    show(ctl(socket, "host", "enable", first))

    say("Stopping hoststated: it removes what it wrote into the kernel")
    lab.stop(daemon)
    log.close()
    show(["ip", "netns", "exec", farm.director, "nft", "list", "ruleset"])


def main() -> int:
    ap = argparse.ArgumentParser(prog="./run demo", description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--requests", type=int, default=30,
                    help="client requests per round (default 30)")
    ap.add_argument("--keep-log", action="store_true", help="print the daemon's log at the end")
    args = ap.parse_args()
    preflight()
    # Ctrl-C and SIGTERM both end in the finally below
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    workdir = Path(tempfile.mkdtemp(prefix="hoststated-demo-"))
    lab = Lab(prefix="hs-demo")         # fixed names, to type while the tour runs
    status = 0
    try:
        tour(lab, workdir, args.requests)
        say("Done")
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        status = 130
    except SystemExit as e:
        print(e, file=sys.stderr)
        status = 1
    except (LabError, RuntimeError) as e:      # the lab could not be built: say why
        print(f"demo: {e}", file=sys.stderr)
        status = 1
    finally:
        # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("Cleaning up: every process and namespace the demo made")
        lab.close()
        if args.keep_log or status:
            logf = workdir / "hoststated.log"
            if logf.exists():
                print(textwrap.indent(logf.read_text()[-4000:], "  log| "))
        shutil.rmtree(workdir, ignore_errors=True)
        left = [n for n in run("ip", "netns", "list").stdout.split() if n.startswith(lab.prefix)]
        print("  namespaces left: " + (", ".join(left) if left else "none"))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
