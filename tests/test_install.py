"""`make install` leaves each installed module's bytecode beside it (uv's --compile-bytecode, as pip does by
default): on a machine that sets PYTHONDONTWRITEBYTECODE, as this kind does, a process without it compiles every
module it imports, every time, and each stage is a process (`make bench-imports` measures the difference)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# What every stage or `lifecycle` command imports, torch aside (pip installs it, with its bytecode).
PACKAGES = ("mlflow", "transformers", "prefect", "dvc", "peft", "trl", "openvino")


@pytest.mark.parametrize("package", PACKAGES)
def test_an_installed_package_has_its_bytecode(package):
    origin = Path(importlib.util.find_spec(package).origin)
    cached = Path(importlib.util.cache_from_source(str(origin)))
    assert cached.is_file(), (
        f"{package} was installed without its bytecode ({cached} is missing): install with "
        "`uv pip install --compile-bytecode` or pip (which compiles by default), as `make install` does"
    )
