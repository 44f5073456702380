"""What a process pays before it does anything: a stage's imports in a fresh interpreter, with the bytecode that
`make install` compiles and without it (every module compiled from source, as on a machine that sets
PYTHONDONTWRITEBYTECODE and an install that compiled nothing), measured alternately in one run.

    python bench/imports.py               # 5 rounds of each
    python bench/imports.py --rounds 9

Every DVC stage is a process (`python -m stages.<name>`), and so is each `lifecycle` command: a tiny project's
stages do well under a second of work each, so this is most of what a tiny `lifecycle run` costs. "Without" points
Python's bytecode cache at an empty folder (PYTHONPYCACHEPREFIX) and forbids writing there, so nothing installed
is touched. The first lines say how much of the environment has its bytecode.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the training and evaluation stages import between them, and the flow's command.
IMPORTS = "import torch, transformers, peft, trl, mlflow, prefect, dvc.repo; import stages.common.tracking"
PACKAGES = ("torch", "transformers", "peft", "trl", "mlflow", "prefect", "dvc", "openvino")


def compiled_share(package: str) -> tuple[int, int]:
    """(modules with a current .pyc beside them, modules) in an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return 0, 0
    sources = [p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.py")]
    compiled = sum(Path(importlib.util.cache_from_source(str(p))).is_file() for p in sources)
    return compiled, len(sources)


def seconds(env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", IMPORTS], cwd=REPO, env=env, capture_output=True, timeout=600)
    if done.returncode:  # output captured: the libraries' import-time warnings stay out of the printout
        raise RuntimeError(done.stderr.decode()[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes of each kind (default 5)")
    args = parser.parse_args()
    for package in PACKAGES:
        compiled, total = compiled_share(package)
        if total:
            print(f"{package:<13} {compiled:>6,} of {total:>6,} modules have their bytecode")
    base = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="no-bytecode-") as empty:
        without = {**base, "PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
        timed: dict[str, list[float]] = {"with bytecode": [], "without": []}
        for i in range(args.rounds):  # alternated: a machine that speeds up or slows down affects both alike
            timed["with bytecode"].append(seconds(base))
            timed["without"].append(seconds(without))
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in timed.items()))
    median = {k: statistics.median(v) for k, v in timed.items()}
    print(f"\n`{IMPORTS}` in a fresh process, median of {args.rounds}:")
    for k, v in median.items():
        print(f"  {k:<14} {v:6.2f} s")
    print(f"  without / with: {median['without'] / median['with bytecode']:.2f}x")


if __name__ == "__main__":
    main()
