"""The config's hand-over from the parent to its children, stage by stage
(issue 17 item 5). Not part of the test suite; no root needed:

    .venv/bin/python bench/handover.py [--hosts 10000] [--rounds 5] [--kind http]

The config is bench/startup.py's (250 addresses in one table, forwarded by
hosts/250 redirects, one port each, check http every 1 s). Each stage runs
in this process, in the daemon's order, --rounds times; the best (least
disturbed) time of each is printed, in ms:

  load          parent: conf.load of the file (--no-lookup)
  wire_config   parent: Config -> plain data (parent.wire_config)
  to_wire       parent: INIT's Message.to_wire, once per child (x2: pfe, hce)
  encode        parent: msgpack frame of it, once per child (x2)
  decode        child: frame -> object (codec.decode_body)
  from_wire     child: the object -> Message, fields checked (messages.from_wire)
  validate      child: Config.model_validate(init.config)
  engine        hce: CheckEngine(config) (probes, timer wheel)
  answers       hce: hce_show.Answers(config, ...)

The child's stages run without the cyclic collector, as in the daemon (up to
its settle_heap). The parent's share of the time to the children's start is load + wire_config
+ 2 x (to_wire + encode); each child's is decode + from_wire + validate, and
hce's also engine + answers. The box's load is printed with them (what other
processes took of its cores meanwhile, from /proc/stat less this process).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOSTS = 250
BASE_PORT = 10000


def config_text(n: int, kind: str) -> str:
    check = 'check http "/" code 200' if kind == "http" else "check tcp"
    hosts = ", ".join(f"198.51.100.{i}" for i in range(1, HOSTS + 1))
    out = [f'socket "/tmp/handover.sock"\nengine none\ninterval 1\ntimeout 800\n'
           f'table <be> {{ {hosts} }}\n']
    for port in range(BASE_PORT, BASE_PORT + max(1, n // HOSTS)):
        out.append(f'redirect "p{port}" {{\n\tlisten on 203.0.113.10 port {port}\n'
                   f'\tforward to <be> port {port} {check}\n}}\n')
    return "".join(out)


def cpu_box() -> tuple[float, float]:
    """(busy jiffies of the whole box, of this process) as seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = sum(v) - v[3] - v[4]             # less idle and iowait
    t = os.times()
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, t.user + t.system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kind", default="http", choices=("http", "tcp"))
    a = ap.parse_args()

    from hoststated.conf.load import load
    from hoststated.conf.model import Config
    from hoststated.hce_sched import CheckEngine
    from hoststated.hce_show import Answers
    from hoststated.ipc import codec, messages
    from hoststated.parent import wire_config

    fd, path = tempfile.mkstemp(suffix=".conf")
    os.write(fd, config_text(a.hosts, a.kind).encode())
    os.close(fd)
    best: dict[str, float] = {}
    size = 0
    box0, own0, wall0 = *cpu_box(), time.monotonic()
    try:
        for _ in range(a.rounds):
            gc.collect()
            t = {}
            t0 = time.perf_counter()
            config = load(path, lookup=False)
            t["load"] = time.perf_counter()
            wire = wire_config(config)
            t["wire_config"] = time.perf_counter()
            init = messages.Init(config=wire, generation=1, uid=0, gid=0)
            msgs = [messages.Message(messages.MsgType.INIT, init) for _ in range(2)]
            objs = [m.to_wire() for m in msgs]
            t["to_wire"] = time.perf_counter()
            frames = [codec.encode(o) for o in objs]
            t["encode"] = time.perf_counter()
            size = len(frames[0])
            body = frames[0][codec.HEADER.size:]
            gc.disable()                    # as a child's start-up (proc.pause_gc)
            obj = codec.decode_body(body)
            t["decode"] = time.perf_counter()
            got = messages.from_wire(obj)
            t["from_wire"] = time.perf_counter()
            child = Config.model_validate(got.payload.config)
            t["validate"] = time.perf_counter()
            engine = CheckEngine(child, lambda row: None)
            t["engine"] = time.perf_counter()
            Answers(child, 1, engine.hosts, engine.stats)
            t["answers"] = time.perf_counter()
            gc.enable()
            prev = t0
            for k, v in t.items():
                best[k] = min(best.get(k, float("inf")), v - prev)
                prev = v
            del config, wire, init, msgs, objs, frames, obj, got, child, engine
    finally:
        os.unlink(path)
    box1, own1, wall1 = *cpu_box(), time.monotonic()
    wall = wall1 - wall0
    others = max(0.0, (box1 - box0) - (own1 - own0)) / wall
    print(f"{a.hosts} hosts ({a.kind}), frame {size / 1e6:.1f} MB; best of {a.rounds}, ms "
          f"(others used {others:.0%} of a core meanwhile, of {os.cpu_count()}):")
    for k, v in best.items():
        print(f"  {k:12s} {v * 1000:8.1f}")
    parent = best["load"] + best["wire_config"] + best["to_wire"] + best["encode"]
    child = best["decode"] + best["from_wire"] + best["validate"]
    print(f"  parent, from load to both frames: {parent * 1000:.0f} ms; "
          f"a child to a Config: {child * 1000:.0f} ms; "
          f"hce to its engine: {(child + best['engine'] + best['answers']) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
