"""Time to check a generated 10,000-line config (2,000 tables, 2,000 redirects),
and one table of 160,000 hosts (a long list must parse in linear time).

    .venv/bin/python bench/bench_conf.py
"""

from __future__ import annotations

import time


def generate(tables: int = 2000) -> str:
    out = ["interval 10", "timeout 1000", "log state changes", ""]
    for i in range(tables):
        a, b = divmod(i, 250)
        out.append(f"table <t{i}> {{ 198.51.{100 + a % 2}.{b + 1} retry 2, "
                   f"203.0.113.{b + 1} weight 2 }}")
    for i in range(tables):
        a, b = divmod(i, 250)
        out += [f"redirect \"r{i}\" {{",
                f"\tlisten on 192.0.2.{b + 1} port {1000 + i}",
                f"\tforward to <t{i}> port 80 mode roundrobin check http \"/\" code 200",
                "}"]
    return "\n".join(out) + "\n"


def one_table(hosts: int = 160_000) -> str:
    addrs = ", ".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(hosts))
    return (f"table <t> {{ {addrs} }}\nredirect r {{\n\tlisten on 192.0.2.9 port 80\n"
            "\tforward to <t> check tcp\n}\n")


def bench_one_table() -> None:
    from hoststated.conf import grammar
    from hoststated.conf.errors import Reporter
    from hoststated.conf.lexer import Lexer
    from hoststated.conf.load import load_text
    from hoststated.conf.parse import Parser
    import gc
    text = one_table()
    report = Reporter()
    gc.disable()                # as conf.load does while it reads
    c0 = time.process_time()
    toks = Lexer(grammar.keywords(), report).lex(text, "one.conf")
    c1 = time.process_time()
    Parser(toks, report).statements()
    c2 = time.process_time()
    gc.enable()
    config = load_text(text, "one.conf", lookup=False)
    c3 = time.process_time()
    print(f"bench_conf: one table of {len(config.tables[0].hosts):,} hosts: lex {c1 - c0:.3f} s, "
          f"parse {c2 - c1:.3f} s, whole -n {c3 - c2:.3f} s cpu")


def main() -> None:
    from hoststated.conf.load import load_text
    text = generate()
    lines = text.count("\n")
    load_text("interval 10\n")            # build the parser once, as the daemon does
    runs = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        config = load_text(text, "bench.conf", lookup=False)
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    walls = sorted(r[0] for r in runs)
    cpus = sorted(r[1] for r in runs)
    print(f"bench_conf: {lines} lines, {len(config.tables)} tables, "
          f"{len(config.redirects)} redirects, {len(config.hosts())} hosts: "
          f"best of 3 {walls[0]:.3f} s wall (worst {walls[-1]:.3f}), "
          f"{cpus[0]:.3f} s cpu (worst {cpus[-1]:.3f}) "
          f"({lines / cpus[0]:,.0f} lines per cpu second)")
    bench_one_table()


if __name__ == "__main__":
    main()
