"""Fuzz of the config loader (issue 19 item 10): mutated real configs, seeded.

    .venv/bin/python bench/fuzz_conf.py [--cases 100000] [--seed 1] [--json]

Each case mutates one of the configs in tests/unit/corpus/ and etc/ (1 to 6
mutations: characters flipped, inserted, deleted; keywords, atoms, extreme
numbers, macros inserted; spans deleted; lines swapped, duplicated, deleted;
splices of two files; bytes that are not UTF-8, decoded as conf.load decodes
them), then loads it as `hoststated -n --no-lookup` does. The outcome must be
a ConfigError whose every diagnostic names the file, or a config whose -nv
output (printconf) loads again to the same model (source positions aside);
anything else is a crash. A case that runs past HANG seconds is a hang; the
process runs under an address-space limit (--max-mb), so a case that
amplifies its input into gigabytes fails as a MemoryError crash.

Prints cases/s, crashes, round-trip failures, hangs and the peak RSS; with
--json one JSON object (tests/unit/test_conf_fuzz.py runs a few thousand
cases this way in CI). Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hoststated.conf import grammar  # noqa: E402
from hoststated.conf.errors import ConfigError  # noqa: E402
from hoststated.conf.load import load_text  # noqa: E402
from hoststated.conf.printconf import print_config  # noqa: E402

HANG = 20                    # s for one case: far above any real one (a hang guard)
NAME = "fuzz.conf"

ATOMS = ["{", "}", "<t>", "<", ">", ",", "=", '"', "'", "#", "\\\n", "\n", "(", ")", "$x",
         "$", "192.0.2.1", "::1", "2001:db8::1", "198.51.100.0/24", "80", "8000:8010",
         '"/"', '"p"', "x", "x = \"v\"", 'include "/nonexistent"', "on", "to", "port",
         "check", "code", "200", "interval", "timeout", "retry", "weight", "disable"]
NUMBERS = ["0", "-1", "1", "65535", "65536", "4294967296", "99999999999999999999",
           "1" * 400, "0x10", "1e9", "00", "-0"]
BAD_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\x00",
             b"\xef\xbb\xbf", b"\xc0\xaf"]


def corpus() -> list[str]:
    files = sorted((ROOT / "tests" / "unit" / "corpus").glob("*.conf")) + \
        sorted((ROOT / "etc").glob("*.conf"))
    return [f.read_text() for f in files]


class Mutator:
    def __init__(self, rng: random.Random, texts: list[str]):
        self.rng = rng
        self.texts = texts
        self.words = sorted(grammar.keywords()) + ATOMS

    def case(self) -> str:
        rng = self.rng
        text = rng.choice(self.texts)
        raw = None
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 6))):
            op = rng.randrange(11)
            if op == 10:
                # bytes that are not UTF-8, inside a quoted string or anywhere
                raw = raw if raw is not None else text.encode("utf-8", "surrogateescape")
                at = raw.find(b'"', rng.randrange(len(raw) + 1)) + 1 if rng.random() < 0.6 \
                    else rng.randrange(len(raw) + 1)
                raw = raw[:at] + rng.choice(BAD_BYTES) + raw[at:]
                continue
            if raw is not None:
                text, raw = raw.decode("utf-8", "surrogateescape"), None
            text = self.mutate(text, op)
        if raw is not None:
            text = raw.decode("utf-8", "surrogateescape")
        return text

    def mutate(self, text: str, op: int) -> str:
        rng = self.rng
        n = len(text)
        at = rng.randrange(n + 1)
        if op == 0:                                    # flip a character
            return text[:at] + chr(rng.randrange(32, 127)) + text[at + 1:]
        if op == 1:                                    # insert a character
            return text[:at] + chr(rng.choice([rng.randrange(0, 0x250), 0x2028, 0xfeff])) + \
                text[at:]
        if op == 2:                                    # delete a span
            return text[:at] + text[at + rng.randint(1, 40):]
        if op in (3, 4):                               # a keyword or an atom
            return text[:at] + " " + rng.choice(self.words) + " " + text[at:]
        if op == 5:                                    # an extreme number for a number
            digits = [i for i in range(max(0, at - 200), min(n, at + 200)) if text[i].isdigit()]
            if digits:
                i = rng.choice(digits)
                j = i
                while j < n and text[j].isdigit():
                    j += 1
                return text[:i] + rng.choice(NUMBERS) + text[j:]
            return text[:at] + rng.choice(NUMBERS) + text[at:]
        lines = text.split("\n")
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        if op == 6:                                    # swap two lines
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 7:                                  # duplicate one
            lines.insert(j, lines[i])
        elif op == 8:                                  # delete one
            del lines[i]
        else:                                          # splice another file in
            other = rng.choice(self.texts).split("\n")
            k = rng.randrange(len(other))
            lines[i:i + rng.randint(0, 5)] = other[k:k + rng.randint(1, 8)]
        return "\n".join(lines)


def _plain(model) -> object:
    """A config's model, source positions left out (they move when printed)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "where"}
        if isinstance(v, (list, tuple)):
            return [strip(x) for x in v]
        return v
    return strip(model.model_dump())


def run_case(text: str) -> str:
    """"error", "loaded", or "roundtrip: why"; raises on a crash."""
    try:
        config = load_text(text, NAME, lookup=False, warnings=[], runnable=False)
    except ConfigError as e:
        for d in e.diagnostics:
            if not str(d).startswith(NAME):
                return f"roundtrip: a diagnostic without its file: {str(d)[:80]}"
        return "error"
    printed = print_config(config)
    try:
        again = load_text(printed, "printed.conf", lookup=False, warnings=[], runnable=False)
    except ConfigError as e:
        return f"roundtrip: -nv output does not load: {str(e).splitlines()[0][:120]}"
    if _plain(again) != _plain(config):
        return "roundtrip: -nv output loads to another model"
    return "loaded"


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def peak_rss_mb() -> float:
    """This program's peak resident memory: VmHWM, which starts again at
    exec. (ru_maxrss does not: run by a big process, it reports the size
    of the parent forked before the exec: 290 MB under a full pytest run.)"""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def campaign(cases: int, seed: int, max_mb: int = 1024) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = max_mb << 20
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.signal(signal.SIGALRM, _alarm)
    mut = Mutator(random.Random(seed), corpus())
    stats = {"cases": cases, "seed": seed, "loaded": 0, "config_errors": 0, "crashes": 0,
             "roundtrip_failures": 0, "hangs": 0, "examples": []}
    start = time.perf_counter()
    for i in range(cases):
        text = mut.case()
        signal.alarm(HANG)
        try:
            outcome = run_case(text)
        except _Hang:
            outcome = "hang"
        except BaseException as e:               # noqa: BLE001 - every other exception counts
            if isinstance(e, KeyboardInterrupt):
                raise
            outcome = "crash: " + "".join(traceback.format_exception_only(e)).strip()[:300]
        finally:
            signal.alarm(0)
        if outcome == "error":
            stats["config_errors"] += 1
        elif outcome == "loaded":
            stats["loaded"] += 1
        else:
            key = {"hang": "hangs"}.get(outcome, "crashes" if outcome.startswith("crash")
                                        else "roundtrip_failures")
            stats[key] += 1
            if len(stats["examples"]) < 10:
                stats["examples"].append({"case": i, "outcome": outcome, "text": text[:2000]})
    elapsed = time.perf_counter() - start
    stats["seconds"] = round(elapsed, 2)
    stats["cases_per_s"] = round(cases / elapsed, 1) if elapsed else None
    stats["max_rss_mb"] = peak_rss_mb()
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-mb", type=int, default=1024, help="address-space limit (MB)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    s = campaign(a.cases, a.seed, a.max_mb)
    if a.json:
        print(json.dumps(s))
    else:
        print(f"{s['cases']} cases (seed {s['seed']}) in {s['seconds']} s: "
              f"{s['cases_per_s']} cases/s; loaded {s['loaded']}, ConfigError "
              f"{s['config_errors']}; crashes {s['crashes']}, round-trip failures "
              f"{s['roundtrip_failures']}, hangs {s['hangs']}; max RSS {s['max_rss_mb']} MB")
        for ex in s["examples"]:
            print(f"  case {ex['case']}: {ex['outcome']}")
    return 1 if s["crashes"] or s["roundtrip_failures"] or s["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
