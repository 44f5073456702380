"""The PII scanner's throughput against a trivial pass over the same text: records/s, MB/s and their ratio.

    .venv/bin/python bench/pii.py [--records 100000 --repeats 3]

Generates help-desk tickets with `planted_records` (the test set's generator, seeded: 1-3 valid PII values per
ticket among ordinary numbers), then times, alternating so that neither side always runs on a warmer machine:
  find_pii  `stages.common.pii.find_pii` on every record (all five types, phone region US)
  lower     `str.lower()` on every record: a floor that touches every character once
Prints the medians and the ratio lower_seconds / find_pii_seconds. The machine is shared and noisy: read the
ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHUNK = 1000  # the progress bar moves per chunk, so that its cost does not weigh on the cheap baseline


def timed(texts: list[str], work, label: str) -> float:
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    bar = tqdm(total=len(texts), desc=label, unit="rec", leave=False) if tqdm else None
    start = time.perf_counter()
    for i in range(0, len(texts), CHUNK):
        for text in texts[i : i + CHUNK]:
            work(text)
        if bar is not None:
            bar.update(min(CHUNK, len(texts) - i))
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from stages.common.pii import find_pii
    from tests.stages.common.test_pii import planted_records

    texts = [text for text, _ in planted_records(args.records, args.seed)]
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    for text in texts[:CHUNK]:  # warm-up: phonenumbers loads a region's metadata on first use
        find_pii(text)

    sides = {"find_pii": (find_pii, []), "lower": (str.lower, [])}
    for i in range(args.repeats):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        for name in order:
            work, runs = sides[name]
            runs.append(timed(texts, work, f"{name} {i + 1}/{args.repeats}"))
    medians = {name: statistics.median(runs) for name, (_, runs) in sides.items()}

    print(
        f"records: {args.records} help-desk tickets, {megabytes:.1f} MB, 1-3 planted PII values each "
        f"(seed {args.seed}); {args.repeats} alternating runs, medians"
    )
    print(f"{'':<10}{'seconds':>10}{'records/s':>14}{'MB/s':>10}")
    for name, t in medians.items():
        print(f"{name:<10}{t:>10.3f}{args.records / t:>14,.0f}{megabytes / t:>10.2f}")
    print(
        f"throughput ratio find_pii / lower: {medians['lower'] / medians['find_pii']:.4f}  "
        f"(lower is {medians['find_pii'] / medians['lower']:,.0f}x faster)"
    )

    from report import command_line, markdown_table, write_section

    rows = [
        [f"`{name}`", f"{t:.3f}", f"{args.records / t:,.0f}", f"{megabytes / t:.2f}"] for name, t in medians.items()
    ]
    write_section(
        "pii",
        command_line("bench-pii", argv),
        f"{args.records:,} generated help-desk tickets ({megabytes:.1f} MB, 1-3 planted PII values each, seed "
        f"{args.seed}); `find_pii` (all five types, phone region US) against a `str.lower()` pass over the same text; "
        f"{args.repeats} alternating runs, medians:\n\n"
        + markdown_table(["", "seconds", "records/s", "MB/s"], rows)
        + f"\n\nThroughput ratio `find_pii` / `lower`: **{medians['lower'] / medians['find_pii']:.4f}** "
        f"(`lower` is {medians['find_pii'] / medians['lower']:,.0f}x faster).",
        title="PII scanner throughput",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
