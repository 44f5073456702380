"""What every data source of the project holds: per role, the rows found and dropped and why, as `lifecycle
validate` reports them. A CLI of its own, so that loading the data (stages/common/sources.py) takes params already
read and never reads params.yaml itself (the loader).

    python -m stages.common.source_report [params.yaml]
"""

from __future__ import annotations

import json

from stages.common.errors import ProjectError
from stages.common.sources import load_all


def main(argv: list[str] | None = None) -> int:
    import sys

    from stages.common.loader import load_params

    args = sys.argv[1:] if argv is None else argv
    try:
        loaded = load_all(load_params(args[0] if args else "params.yaml"))
    except ProjectError as exc:
        print(exc, file=sys.stderr)
        return 2
    for role, data in loaded.items():
        print(role, json.dumps(data.summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
