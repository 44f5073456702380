"""Snapshot the raw text of the offline default project: stdlib docstrings and Python's reference topics.

Run once by a maintainer; the output is committed under data/raw/ so the project's data does not change
with the Python version that happens to run the pipeline:

    python data/snapshot_stdlib.py            # writes data/raw/{docstrings,reference}.jsonl
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

# Pure-Python, always-importable modules with well-written docstrings. No platform-specific modules
# (winreg, fcntl) so that the snapshot is the same wherever it is taken.
MODULES = """
abc argparse array ast base64 bisect calendar cmath codecs collections colorsys configparser contextlib
copy csv dataclasses datetime decimal difflib dis email.utils enum filecmp fnmatch fractions ftplib
functools gettext glob gzip hashlib heapq hmac html http.client imaplib inspect io ipaddress itertools
json keyword linecache locale logging lzma math mimetypes operator os os.path pathlib pickle pkgutil
platform plistlib poplib pprint queue quopri random re reprlib sched secrets selectors shelve shlex
shutil signal smtplib socket sqlite3 statistics string struct subprocess sys tarfile tempfile textwrap
threading time timeit tokenize traceback types typing unicodedata urllib.parse urllib.request uuid
warnings weakref zipfile zlib
""".split()


def _public_members(module):
    """(qualified name, object) for public functions, classes and their methods defined in `module`."""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        if getattr(obj, "__module__", None) not in (module.__name__, None) and not inspect.isbuiltin(obj):
            continue
        if inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            yield f"{module.__name__}.{name}", obj
            for meth_name, meth in sorted(vars(obj).items()):
                if meth_name.startswith("_"):
                    continue
                if inspect.isfunction(meth) or inspect.ismethoddescriptor(meth):
                    yield f"{module.__name__}.{name}.{meth_name}", meth


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def docstrings() -> list[dict]:
    rows, seen = [], set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for qualname, obj in _public_members(module):
            doc = inspect.getdoc(obj)
            if not doc or qualname in seen:
                continue
            seen.add(qualname)
            rows.append({"name": qualname, "signature": _signature(obj), "doc": doc})
    return rows


def reference() -> list[dict]:
    from pydoc_data.topics import topics

    return [{"topic": name, "text": text} for name, text in sorted(topics.items())]


def main() -> int:
    out = Path(__file__).parent / "raw"
    out.mkdir(exist_ok=True)
    for file_name, rows in (("docstrings.jsonl", docstrings()), ("reference.jsonl", reference())):
        tmp = out / (file_name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(out / file_name)
        print(f"{out / file_name}: {len(rows)} rows (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
