"""Each bench writes what it measured into its own section of docs/benchmarks.md, so a re-measure is a bench run.

    from report import command_line, markdown_table, write_section
    write_section("pii", command_line("bench-pii"), markdown_table(["", "seconds"], rows), title="PII scanner")

A section sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; writing it replaces only that span (or
appends the section at the end of the page the first time), so hand-written notes outside the markers stay. The
section opens with a heading and a line naming the command, today's date and the machine.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    """`2 CPU cores, 24 GiB, no GPU`: the cores this process may use, the RAM, and the CUDA device if any."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        gib = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        gib = "RAM unknown"
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        gpu = "no GPU (no torch)"
    return f"{cores} CPU cores, {gib}, {gpu}"


def command_line(make_target: str | None = None, argv: list[str] | None = None) -> str:
    """The command a reader runs to measure again: `make <target>` when the bench ran with its defaults, else the
    script with the arguments it was given."""
    args = sys.argv[1:] if argv is None else argv
    if make_target and not args:
        return f"make {make_target}"
    return shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *args])


def in_fresh_process(code: str, args: list[str], timeout: int, **env: str) -> dict:
    """Run `code` with `python -c` and `args` in a fresh process, glibc told to mmap and trim large blocks (so a
    memory peak measures the model, not the allocator's heap), and return the JSON its last line prints."""
    import json
    import subprocess

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", **env}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown_table(headers: list[str], rows: list[list], right: bool = True) -> str:
    """A markdown table; every column but the first right-aligned (figures) unless `right` is false."""
    align = ["---"] + ["---:" if right else "---"] * (len(headers) - 1)
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def write_section(
    name: str, command: str, body_markdown: str, title: str | None = None, path: Path = BENCHMARKS
) -> Path:
    """Replace the `name` section of docs/benchmarks.md (or append it) with a heading, the line
    "`command` — measured DATE on MACHINE" and the body. The page is rewritten atomically."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = (
        f"{start}\n## {title or name}\n\n`{command}` — measured {time.strftime('%Y-%m-%d')} on {machine()}\n\n"
        f"{body_markdown.strip()}\n\n{end}"
    )
    text = path.read_text(encoding="utf-8") if path.exists() else "# Measured figures\n"
    begin = text.find(start)
    if begin >= 0:
        finish = text.find(end, begin)
        if finish < 0:
            raise SystemExit(f"{path}: `{start}` has no closing `{end}`; add it (or remove both) and run again")
        text = text[:begin] + section + text[finish + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes it 0600; the page keeps its own mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote section `{name}` of {path}")
    return path
