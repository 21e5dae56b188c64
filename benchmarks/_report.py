"""Run benchmarks and regenerate the measured section of ``docs/performance.md`` from what they printed.

``make bench`` runs every ``benchmarks/*.py`` (``make bench BENCH="benchmarks/runtimes.py ..."`` some of them)
through this script. Each run's output is kept in ``benchmarks/results.json`` (script -> date, machine, verdict,
ratio, output); the section of ``docs/performance.md`` between the ``bench:begin`` and ``bench:end`` markers is
rewritten from that file: one row per benchmark (its ``ratio:``, quiet or BUSY, the load average) and each
benchmark's own table as it printed it. A benchmark not run this time keeps its last row, with its date. No figure
in that section is typed by hand.

    python benchmarks/_report.py [SCRIPT ...] [--docs docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results.json"
#: Library log lines (Ray's, warnings, progress bars) left out of the page: the benchmark's own lines stay.
NOISE = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d|^\[\d{4}-|^(INFO|WARNING|ERROR) |\(raylet\)|\x1b\[|Warning|warnings\.warn|"
                   r"\d+%\|")
BEGIN, END = "<!-- bench:begin (written by benchmarks/_report.py; do not edit) -->", "<!-- bench:end -->"


def run(script: Path, timeout_s: float) -> dict[str, str]:
    """Run one benchmark, echoing its output; what it printed and the lines the section is built from."""
    print(f"== {script.relative_to(REPO)} (load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())})",
          flush=True)
    started = time.time()
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
        if time.time() - started > timeout_s:
            proc.kill()
            lines.append(f"killed after {timeout_s:.0f} s")
            break
    code = proc.wait()

    def pick(prefix: str | tuple[str, ...]) -> str:
        return next((x for x in reversed(lines) if x.startswith(prefix)), "")

    verdict = pick(("quiet:", "BUSY:")) or "no verdict printed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": f"{time.time() - started:.0f}",
        "exit": str(code),
        "machine": pick("machine:").removeprefix("machine: ").split("; load average")[0],
        "verdict": verdict,
        "ratio": pick("ratio:").removeprefix("ratio:").strip() or "none (failed)",
        "output": "\n".join(x for x in lines if not NOISE.search(x))[-6000:],
    }


def section(results: dict[str, dict[str, str]]) -> str:
    rows = ["| script | `ratio` | run | machine | quiet? |", "|---|---:|---|---|---|"]
    for script, r in sorted(results.items()):
        quiet = r["verdict"].split(":")[0]
        if quiet == "BUSY":
            quiet = "**BUSY** (not comparable)"
        rows.append(f"| `{script}` | {r['ratio']} | {r['date']}, {r['seconds']} s, exit {r['exit']} | "
                    f"{r['machine']} | {quiet} |")
    parts = [BEGIN, "", *rows, ""]
    for script, r in sorted(results.items()):
        parts += [f"<details><summary><code>{script}</code> as printed ({r['date']})</summary>", "", "```",
                  r["output"], "```", "", "</details>", ""]
    return "\n".join([*parts, END])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scripts", nargs="*", type=Path, help="benchmarks to run (default: every benchmarks/*.py)")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "performance.md", help="page to regenerate")
    p.add_argument("--timeout", type=float, default=3600, help="seconds a benchmark may run before it is killed")
    p.add_argument("--no-run", action="store_true", help="only rewrite the page from benchmarks/results.json")
    args = p.parse_args()

    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    scripts = [s.resolve() for s in args.scripts] or sorted(x for x in HERE.glob("[!_]*.py"))
    failed = []
    for script in [] if args.no_run else scripts:
        result = run(script, args.timeout)
        results[str(script.relative_to(REPO))] = result
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        if result["exit"] != "0":
            failed.append(script.name)
    text = args.docs.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.docs}: no {BEGIN!r} ... {END!r} markers to write between")
    head, rest = text.split(BEGIN, 1)
    args.docs.write_text(head + section(results) + rest.split(END, 1)[1])
    print(f"{args.docs}: measured section rewritten ({len(results)} benchmarks)")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
