"""A `sql:` source's snapshot at scale: a SQLite table of N rows streamed into its JSONL snapshot
(stages/common/live.py) in a fresh process, its peak memory printed beside the file's size.

    python bench/snapshot.py                 # 10,000,000 rows (about 1 GB of JSONL; a few minutes here)
    python bench/snapshot.py --rows 1000000

The peak is the child's VmHWM (/proc/self/status), not ru_maxrss, which carries the forking parent's peak across
exec. tests/stages/common/test_live.py runs the same measurement on 1M rows and holds it under a bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SNAPSHOT = """
import json, sys
from stages.common.live import read_sql, write_snapshot
from stages.common.params import Sql
from pathlib import Path
out = write_snapshot(Path(sys.argv[1]), read_sql("general", Sql(query=sys.argv[2], url_env="BENCH_DB")), "general")
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({**out, "peak_bytes": hwm}))
"""
QUERY = "select question, answer, opened from tickets order by id"


def make_table(path: Path, rows: int) -> None:
    """`tickets` (id, question, answer, opened) with `rows` rows, generated inside SQLite (seconds per million)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, question TEXT, answer TEXT, opened TEXT)")
        db.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            "INSERT INTO tickets SELECT x, 'What does `module' || (x % 997) || '.function' || x || '` do?', "
            "'It returns the value number ' || x || ' of the list.', date('2026-01-01', '+' || (x % 365) || ' days') "
            "FROM n",
            (rows,),
        )


def snapshot_peak(db: Path, out: Path) -> dict:
    """The snapshot of the table into `out`, in a fresh process: {"rows", "new_rows", "changed", "peak_bytes"}."""
    env = {**os.environ, "BENCH_DB": f"sqlite:///{db}", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, str(out), QUERY], env=env, capture_output=True, text=True, timeout=3600
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
        db, out = Path(tmp) / "tickets.db", Path(tmp) / "general.jsonl"
        start = time.perf_counter()
        make_table(db, args.rows)
        made = time.perf_counter() - start
        start = time.perf_counter()
        first = snapshot_peak(db, out)
        seconds = time.perf_counter() - start
        again = snapshot_peak(db, out)  # an unchanged table: the file stays, nothing is new
        size = out.stat().st_size
    peak = first["peak_bytes"]
    lines = [
        f"{args.rows:,} rows: table made in {made:.0f} s; snapshot {size / 2**20:,.0f} MiB in {seconds:.0f} s",
        f"peak RSS {peak / 2**20:,.0f} MiB = {peak / size:.2f}x the file ({peak / 2**30:.2f} GiB; bound 1 GiB)",
        f"again, unchanged: changed={again['changed']} new_rows={again['new_rows']}",
    ]
    print("\n".join(lines))
    from report import command_line, markdown_table, write_section

    write_section(
        "snapshot",
        command_line("bench-snapshot"),
        f"A `sql:` source of {args.rows:,} rows (SQLite, 4 columns) streamed into its JSONL snapshot by "
        "`lifecycle snapshot`'s code in a fresh process (peak: VmHWM):\n\n"
        + markdown_table(
            ["rows", "snapshot", "seconds", "peak RSS", "peak / file", "unchanged again"],
            [
                [
                    f"{args.rows:,}",
                    f"{size / 2**20:,.0f} MiB",
                    f"{seconds:.0f}",
                    f"{peak / 2**20:,.0f} MiB",
                    f"{peak / size:.2f}x",
                    f"changed {again['changed']}, {again['new_rows']} new",
                ]
            ],
        ),
        title="Database snapshots at scale",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
