"""The offline default project's data: a Python standard-library help desk, as ordinary data files.

    python data/stdlib/make_data.py             # raw/ -> sft.jsonl, preference.jsonl, general.jsonl, corpus.jsonl,
                                                #          knowledge/*.txt (what params.yaml `data.sources` points at)
    python data/stdlib/make_data.py --refresh   # first re-snapshot raw/ from the Python running this script

raw/ is a snapshot (docstrings of public stdlib functions, Python's reference topics) taken once and committed, so
the project's data does not change with the Python that runs the pipeline. The files made from it are what any
team would write: prompt/completion pairs, prompt/chosen/rejected pairs, documents, plain text. Nothing in the
pipeline knows they came from here.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import string
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 2026  # not the pipeline's seed (17): the same seed would draw the same indices as its split
MAX_ANSWER_CHARS = 140
PREFERENCE_PAIRS = 600
GENERAL_FRACTION = 0.1  # reference topics whose paragraphs are the general text of the forgetting check

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


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().strip().strip(string.punctuation + " "))


def first_sentence(doc: str) -> str:
    """The docstring's summary: its first paragraph up to the first full stop."""
    paragraph = re.split(r"\n\s*\n", doc.strip())[0]
    paragraph = re.sub(r"\s+", " ", paragraph)
    match = re.search(r"^(.+?[.!?])(\s|$)", paragraph)
    return (match.group(1) if match else paragraph).strip()


def _is_summary(answer: str) -> bool:
    """A sentence, not a signature line (`BoolOp(boolop op, ...)`) or a lead-in to a list (`...:`)."""
    return answer[0].isupper() and answer.endswith(".") and not re.match(r"^[\w.]+\(", answer)


def qa_pairs(docstrings: list[dict]) -> list[dict]:
    """One question per function, deduplicated by question and by answer (aliases share summaries), so that no
    answer text can be in two splits."""
    pairs, questions, answers = [], set(), set()
    for row in docstrings:
        answer = first_sentence(row["doc"])
        if not 15 <= len(answer) <= MAX_ANSWER_CHARS or not _is_summary(answer):
            continue
        question = f"What does `{row['name']}` do?"
        if _normalize(question) in questions or _normalize(answer) in answers:
            continue
        questions.add(_normalize(question))
        answers.add(_normalize(answer))
        pairs.append({"prompt": question, "completion": answer, "function": row["name"]})
    return pairs


def preference_pairs(pairs: list[dict], size: int, rng: random.Random) -> list[dict]:
    """chosen = the true summary; rejected = the summary of a function from another module (fluent but wrong)."""
    out = []
    for item in rng.sample(pairs, min(size, len(pairs))):
        module = item["function"].rsplit(".", 1)[0]
        while True:
            other = rng.choice(pairs)
            if other["function"].rsplit(".", 1)[0] != module:
                break
        out.append({"prompt": item["prompt"], "chosen": item["completion"], "rejected": other["completion"]})
    return out


def general_text(reference: list[dict], corpus: str, rng: random.Random) -> list[dict]:
    """Paragraphs of a sample of reference topics: text the tuned model never trains on (the forgetting check).
    Any paragraph the pretraining corpus also holds (topics quote docstrings) is left out."""
    topics = reference[:]
    rng.shuffle(topics)
    held = topics[: max(1, round(len(topics) * GENERAL_FRACTION))]
    seen, out = set(), []
    for t in held:
        for para in re.split(r"\n\s*\n", t["text"]):
            para = para.strip()
            if len(para) > 80 and para not in corpus and para not in seen:
                seen.add(para)
                out.append({"topic": t["topic"], "text": para})
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    print(f"{path.relative_to(HERE.parents[1])}: {len(rows)} rows")


def build(raw: Path, out: Path) -> None:
    docstrings = [json.loads(line) for line in (raw / "docstrings.jsonl").read_text(encoding="utf-8").splitlines()]
    reference = [json.loads(line) for line in (raw / "reference.jsonl").read_text(encoding="utf-8").splitlines()]
    rng = random.Random(SEED)
    pairs = qa_pairs(docstrings)
    _write_jsonl(out / "sft.jsonl", pairs)
    _write_jsonl(out / "preference.jsonl", preference_pairs(pairs, PREFERENCE_PAIRS, rng))
    # Pretraining reads every docstring with its function's name: a foundation model has read the docs; tuning
    # teaches the one-line answer, not the facts.
    corpus = [{"text": f"{d['name']}{d['signature']}\n{d['doc']}"} for d in docstrings]
    _write_jsonl(out / "corpus.jsonl", corpus)
    _write_jsonl(out / "general.jsonl", general_text(reference, "\n".join(r["text"] for r in corpus), rng))
    knowledge = out / "knowledge"
    knowledge.mkdir(exist_ok=True)
    for old in [*knowledge.glob("*.txt"), *knowledge.glob("*.md")]:
        old.unlink()
    unique = {t["text"]: t for t in reference}.values()  # some topics are aliases of others
    for topic in unique:
        (knowledge / f"{topic['topic']}.txt").write_text(topic["text"] + "\n", encoding="utf-8")
    # The API reference the help desk's questions are about: one Markdown page per module, a section per function
    # (what retrieval has to find; the questions name the function, the section heading is its name).
    modules: dict[str, list[dict]] = {}
    for d in docstrings:
        module = next(
            (m for m in sorted(MODULES, key=len, reverse=True) if d["name"].startswith(m + ".")),
            d["name"].split(".")[0],
        )  # os.path's functions are posixpath's
        modules.setdefault(module, []).append(d)
    for module, members in sorted(modules.items()):
        page = [f"# {module}", ""] + [
            f"## {d['name']}\n\n`{d['name']}{d['signature']}`\n\n{d['doc']}\n" for d in members
        ]
        (knowledge / f"api-{module}.md").write_text("\n".join(page), encoding="utf-8")
    print(f"{knowledge.relative_to(HERE.parents[1])}/: {len(unique)} reference topics, {len(modules)} API pages")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refresh", action="store_true", help="re-snapshot raw/ from this Python first")
    args = parser.parse_args(argv)
    raw = HERE / "raw"
    if args.refresh:
        raw.mkdir(exist_ok=True)
        for file_name, rows in (("docstrings.jsonl", docstrings()), ("reference.jsonl", reference())):
            _write_jsonl(raw / file_name, rows)
        print(f"(snapshot of Python {sys.version.split()[0]})")
    build(raw, HERE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
