"""`lifecycle validate` against a bare interpreter start: it runs first on every run, so it must stay cheap.

    make bench-scope          # or: .venv/bin/python bench/scope.py [--repeats 7]

Times, alternating so that neither side always runs on a warmer machine, each as a fresh process from the
project root on the offline default (params.yaml, every data source opened):
  python -c pass            the interpreter alone
  lifecycle validate        params read and checked, the catalog, every source opened, the plan printed
Prints the medians, their ratio, and whether validate stays under the 2 s target (wall time, interpreter start
included). The machine is shared and noisy: read the ratio, and the target with that in mind.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 2.0


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "lifecycle validate": [str(bin_dir / "lifecycle"), "validate"],
    }
    times = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            times[name].append(wall(command))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.repeats} alternating runs each, medians (wall, interpreter start included)")
    for name, seconds in med.items():
        print(f"{name:<22}{seconds:>8.3f} s   (min {min(times[name]):.3f}, max {max(times[name]):.3f})")
    ratio = med["lifecycle validate"] / med["python -c pass"]
    verdict = "under" if med["lifecycle validate"] < TARGET_SECONDS else "OVER"
    print(f"lifecycle validate / python -c pass: {ratio:.1f}x; {verdict} the {TARGET_SECONDS:g} s target")

    from report import command_line, markdown_table, write_section

    rows = [
        [f"`{name}`", f"{seconds:.3f}", f"{min(times[name]):.3f}", f"{max(times[name]):.3f}"]
        for name, seconds in med.items()
    ]
    write_section(
        "scope",
        command_line("bench-scope"),
        f"`lifecycle validate` on the default project (params, catalog, every source opened, the plan printed) next "
        f"to a bare interpreter start; {args.repeats} alternating runs each, fresh processes, wall time:\n\n"
        + markdown_table(["command", "median (s)", "min (s)", "max (s)"], rows)
        + f"\n\n`lifecycle validate` / `python -c pass`: **{ratio:.1f}x**; {verdict} the {TARGET_SECONDS:g} s target.",
        title="Scope: `lifecycle validate` against a bare interpreter",
    )


if __name__ == "__main__":
    main()
