"""data: the team's sources for each role, validated row by row, deduplicated, split without leakage.

    python -m stages.data           # writes data/processed/{sft,dev,eval,preference,knowledge,general,corpus}.jsonl,
                                    # data/processed/card.md and metrics/data.json

Reading and checking rows is stages/common/sources.py (what `lifecycle validate` reports too). Here: held-out
`eval` and `dev` splits are taken from `sft` when no source gives them (by size or fraction, seeded, whole
`group_by` groups at a time); a training row (sft, preference, corpus) whose prompt or text is also a held-out
prompt or reference is removed and counted; training prompts whose word n-grams overlap an eval prompt's by more
than `data.near_duplicate_threshold` (Jaccard) are reported with examples (kept: near is not the same).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from collections import Counter
from itertools import chain
from pathlib import Path

from stages.common.cli import stage_main
from stages.common.errors import ProjectError
from stages.common.io import atomic_dir, write_json, write_jsonl, write_text
from stages.common.live import live_roles, snapshot_path
from stages.common.params import FEEDBACK, FEEDBACK_ROLES, QA_ROLES, ROLES, Params, Paths
from stages.common.records import normalize
from stages.common.sources import RoleData, dedupe_key, holdout_size, load_all, load_feedback

log = logging.getLogger(__name__)

NEAR_EXAMPLES = 5


def hold_out(records: list[dict], sizes: dict[str, float], seed: int) -> dict[str, list[dict]]:
    """Split `records` into sft and the held-out roles in `sizes` (eval first), whole groups at a time, seeded."""
    groups: dict[str, list[dict]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.pop("group", str(i)), []).append(record)
    keys = list(groups)
    random.Random(seed).shuffle(keys)  # noqa: S311 - seeded sampling, not security
    wanted = {role: holdout_size(size, len(records)) for role, size in sizes.items()}
    if sum(wanted.values()) >= len(records):
        raise ProjectError(
            [
                f"`data.holdout` asks for {' + '.join(f'{n} {r}' for r, n in wanted.items())} rows but "
                f"`data.sources.sft` has {len(records)} usable rows: lower the sizes or add data"
            ]
        )
    out: dict[str, list[dict]] = {role: [] for role in wanted}
    out["sft"] = []
    roles = iter(wanted)
    role = next(roles)
    for key in keys:
        while role is not None and len(out[role]) >= wanted[role]:
            role = next(roles, None)
        out[role or "sft"].extend(groups[key])
    for role in wanted:  # held-out rows are judged against references, like an eval source's rows
        out[role] = [
            {**{k: v for k, v in r.items() if k != "completion"}, "references": [r["completion"]]} for r in out[role]
        ]
    return out


_WORDS = re.compile(r"\w+")


def _ngram_incidence(texts: list[str], n: int):
    """Each text's distinct word n-grams, as parallel arrays (row, n-gram key) sorted by row. A key is a 64-bit
    polynomial hash of the n-gram's word hashes (collisions are negligible at 2**64)."""
    import numpy as np

    rows = [_WORDS.findall(t.lower()) for t in texts]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    words = np.fromiter(map(hash, chain.from_iterable(rows)), dtype=np.int64, count=int(lengths.sum()))
    ends = np.cumsum(lengths)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    key = np.zeros(len(words), dtype=np.int64)
    with np.errstate(over="ignore"):
        for k in range(n):
            key[: len(words) - k] = key[: len(words) - k] * np.int64(1_000_003) + words[k:]
    inside = np.arange(len(words)) + n <= ends[row_of]  # windows that do not cross into the next row
    row_of, key = row_of[inside], key[inside]
    with np.errstate(over="ignore"):  # one sort of one array: (row, key) pairs made distinct by a combined hash
        _, first = np.unique(key * np.int64(0x9E3779B97F4A7C15 - 2**64) + row_of, return_index=True)
    return row_of[first], key[first]


def near_duplicates(train: list[str], held: list[str], n: int, threshold: float) -> list[dict]:
    """Training texts whose word n-gram sets overlap a held-out text's with Jaccard >= threshold, exactly:
    |A & B| for every pair at once as a sparse product of row x n-gram incidence matrices (scipy). Several
    times cheaper than per-row Python sets or datasketch's MinHash LSH (~83 us/row measured here), and exact."""
    import numpy as np
    from scipy.sparse import csr_matrix

    if not train or not held:
        return []
    held_rows, held_keys = _ngram_incidence(held, n)
    train_rows, train_keys = _ngram_incidence(train, n)
    columns = np.unique(held_keys)
    train_size = np.bincount(train_rows, minlength=len(train))
    held_size = np.bincount(held_rows, minlength=len(held))
    at = np.searchsorted(columns, train_keys).clip(max=len(columns) - 1)
    shared = columns[at] == train_keys  # only n-grams a held-out row has can be in an intersection
    a = csr_matrix(
        (np.ones(int(shared.sum()), dtype=np.int32), (train_rows[shared], at[shared])), shape=(len(train), len(columns))
    )
    b = csr_matrix(
        (np.ones(len(held_keys), dtype=np.int32), (held_rows, np.searchsorted(columns, held_keys))),
        shape=(len(held), len(columns)),
    )
    inter = (a @ b.T).tocoo()
    jaccard = inter.data / (train_size[inter.row] + held_size[inter.col] - inter.data)
    hits = jaccard >= threshold
    return [
        {"train": train[i], "held_out": held[j], "jaccard": round(float(v), 3)}
        for i, j, v in zip(inter.row[hits], inter.col[hits], jaccard[hits])
    ]


def remove_leaks(splits: dict[str, list[dict]]) -> dict[str, int]:
    """Drop training rows that repeat a held-out prompt (or, for the corpus, a held-out prompt or reference)."""
    eval_prompts = {normalize(r["prompt"]) for r in splits["eval"]}
    held_prompts = eval_prompts | {normalize(r["prompt"]) for r in splits["dev"]}
    held_texts = held_prompts | {normalize(ref) for r in splits["eval"] + splits["dev"] for ref in r["references"]}
    removed = {}
    checks = {
        "dev": ("prompt", eval_prompts),
        "sft": ("prompt", held_prompts),
        "preference": ("prompt", held_prompts),
        "corpus": ("text", held_texts),
    }
    for role, (key, held) in checks.items():
        kept = [r for r in splits[role] if normalize(r[key]) not in held]
        removed[role] = len(splits[role]) - len(kept)
        splits[role] = kept
    return removed


def split(loaded: dict[str, RoleData], params: Params) -> dict[str, list[dict]]:
    splits = {role: loaded[role].records if role in loaded else [] for role in ROLES}
    sizes = {role: getattr(params.data.holdout, role) for role in ("eval", "dev") if role not in loaded}
    if sizes:
        splits.update(hold_out(splits["sft"], sizes, params.project.seed))
    for role in QA_ROLES:
        for record in splits[role]:
            record.pop("group", None)
    return splits


def declared_warnings(params: Params, splits: dict[str, list[dict]]) -> list[str]:
    """`scope.data` declared more than the data has: a warning naming both numbers (the plan uses the real ones)."""
    declared = params.scope.data
    found = {
        "sft_pairs": len(splits["sft"]),
        "preference_pairs": len(splits["preference"]),
        "knowledge_documents": len(splits["knowledge"]),
    }
    return [
        f"`scope.data.{key}` declares {getattr(declared, key)}, the data has {n}"
        for key, n in found.items()
        if getattr(declared, key) > n
    ]


PII_EXAMPLES = 3  # masked examples per role and type in the data card


def _scan(value, region: str, redacting: bool):
    """A record's value with its strings scanned (lists and message dicts walked): (value, findings)."""
    from stages.common.pii import find_pii, redact

    if isinstance(value, str):
        found = find_pii(value, region)
        return (redact(value, found) if redacting and found else value), found
    if isinstance(value, list):
        pairs = [_scan(v, region, redacting) for v in value]
        return [v for v, _ in pairs], [f for _, fs in pairs for f in fs]
    if isinstance(value, dict):
        pairs = {k: _scan(v, region, redacting) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, [f for _, fs in pairs.values() for f in fs]
    return value, []


def scan_personal_data(loaded: dict[str, RoleData], params: Params) -> dict:
    """Every record of every role scanned for personal data (stages/common/pii.py) when the scope declares it;
    `scope.privacy.on_pii` says whether to redact in place, fail naming where, or report only. Returns counts
    per role and type, records touched, and masked examples; raises before anything is written on `fail`."""
    from stages.common.pii import TYPES, mask

    privacy = params.scope.privacy
    redacting = privacy.on_pii == "redact"
    report = {"action": privacy.on_pii, "found": {}, "records": {}, "examples": {}}
    where = []
    for role, d in loaded.items():
        counts = Counter({t: 0 for t in TYPES})
        touched, examples = 0, {}
        for n, record in enumerate(d.records):
            scanned = {k: _scan(v, privacy.phone_region, redacting) for k, v in record.items()}
            findings = [f for _, fs in scanned.values() for f in fs]
            if not findings:
                continue
            touched += 1
            for f in findings:
                counts[f.type] += 1
                if len(examples.setdefault(f.type, [])) < PII_EXAMPLES:
                    examples[f.type].append(mask(f))
            if len(where) < 10:
                where.append(f"{d.source}: record {n + 1}: " + ", ".join(f"{f.type} {mask(f)}" for f in findings))
            if redacting:
                d.records[n] = {k: v for k, (v, _) in scanned.items()}
        report["found"][role], report["records"][role], report["examples"][role] = dict(counts), touched, examples
    total = sum(report["records"].values())
    if total and privacy.on_pii == "fail":
        raise ProjectError(
            [f"personal data in {total} records (`scope.privacy.on_pii` is fail); the first:"]
            + where
            + [
                "remove it from the source files, or set `scope.privacy.on_pii: redact` to replace "
                "each value with its type ([EMAIL], [PHONE], ...)"
            ]
        )
    if total:
        log.warning(
            "personal data in %d records: %s",
            total,
            "redacted"
            if redacting
            else "reported only (`scope.privacy.on_pii: report`): it stays in the training data",
        )
    return report


def run(params: Params, paths: Paths) -> dict:
    loaded = load_all(params)  # every structural problem of every role, raised before anything is written
    # Production feedback adds training rows after the split: the held-out rows stay what they were, so a new
    # version is judged on the rows its champion was.
    production = (
        {f"{FEEDBACK}->{r}": d for r, d in load_feedback(params).items()} if params.data.sources.feedback else {}
    )
    pii = scan_personal_data(loaded | production, params) if params.scope.privacy.personal_data else None
    splits = split(loaded, params)
    added = set()
    for d in production.values():
        have = {dedupe_key(d.role, r) for r in splits[d.role]}
        for record in d.records:
            if dedupe_key(d.role, record) in have:
                d.drop("feedback", "already in the data")
            else:
                splits[d.role].append(record)
                added.add(id(record))
    removed = remove_leaks(splits)
    # Prompts, the model's input, as for exact leaks: an eval input the model has nearly seen is contamination.
    near = near_duplicates(
        [r["prompt"] for r in splits["sft"] + splits["preference"]],
        [r["prompt"] for r in splits["eval"]],
        params.data.near_duplicate_ngram,
        params.data.near_duplicate_threshold,
    )
    for role in QA_ROLES:
        if not splits[role] and (role != "sft" or params.adapt.technique.value != "prompt"):
            raise ProjectError(
                [
                    f"no usable `{role}` rows are left after validation and the held-out split; "
                    "see `lifecycle validate` for what was dropped"
                ]
            )
    warnings = declared_warnings(params, splits)
    for w in warnings:
        log.warning(w)

    metrics = {
        "rows": {role: len(splits[role]) for role in ROLES},
        "dropped": {role: sum(d.dropped.values()) for role, d in loaded.items()},
        "exact_duplicates_removed": removed,
        "near_duplicates": len(near),
        "held_out_from_sft": sorted(r for r in ("eval", "dev") if r not in loaded),
    }
    if production:  # rows that came from production and made it through every check
        metrics["from_production"] = {role: sum(id(r) in added for r in splits[role]) for role in FEEDBACK_ROLES}
        # Whose feedback was taken and whose waits (review), was rejected, untrusted or over the per-caller bound.
        callers = production[f"{FEEDBACK}->sft"].callers
        metrics["feedback_by_caller"] = {c: dict(sorted(t.items())) for c, t in sorted(callers.items())}
    if pii:
        metrics["pii"] = {role: {**found, "records": pii["records"][role]} for role, found in pii["found"].items()}
    with atomic_dir(paths.processed) as out:
        for role in ROLES:
            write_jsonl(out / f"{role}.jsonl", splits[role])
        write_text(out / "card.md", card(params, loaded | production, metrics, near, warnings, pii))
        # The snapshots this data was made from, in the stage's output: DVC keeps exactly what trained the model.
        for role in live_roles(params):
            (out / "snapshots").mkdir(exist_ok=True)
            shutil.copy(snapshot_path(paths.snapshots, role), out / "snapshots" / f"{role}.jsonl")
    write_json(Path(paths.metrics) / "data.json", metrics)

    from stages.common.tracking import log_splits, stage_run

    with stage_run("data", params, params.data.model_dump(mode="json")) as _:
        import mlflow

        mlflow.log_metrics(
            {
                f"{k}.{role}": v
                for k, d in metrics.items()
                if isinstance(d, dict) and k not in ("pii", "feedback_by_caller")
                for role, v in d.items()
            }
            | {"near_duplicates": len(near)}
            | {
                f"feedback.{caller}.{kind}": n
                for caller, t in metrics.get("feedback_by_caller", {}).items()
                for kind, n in t.items()
            }
            | {f"pii.{role}.{t}": n for role, d in metrics.get("pii", {}).items() for t, n in d.items()}
        )
        mlflow.log_artifact(str(Path(paths.processed) / "card.md"))
        log_splits(paths.processed, ROLES)
        log_splits(Path(paths.processed) / "snapshots", list(live_roles(params)), snapshot=True)
    counts = ", ".join(f"{r} {len(splits[r])}" for r in ROLES if splits[r])
    if production:
        counts += " (from production: " + ", ".join(f"{r} {n}" for r, n in metrics["from_production"].items()) + ")"
    found = sum(pii["records"].values()) if pii else 0
    return {
        "metrics": metrics,
        "summary": f"{counts}; {sum(removed.values())} leaked rows removed, "
        f"{len(near)} near-duplicates reported"
        + (f"; personal data in {found} records ({pii['action']})" if pii else ""),
    }


def card(
    params: Params,
    loaded: dict[str, RoleData],
    metrics: dict,
    near: list[dict],
    warnings: list[str],
    pii: dict | None = None,
) -> str:
    lines = [
        f"# Data card: {params.project.name}",
        "",
        params.project.description,
        "",
        "| role | source | rows found | dropped | kept after split and leakage checks |",
        "|---|---|---:|---:|---:|",
    ]
    for role in ROLES:
        d = loaded.get(role)
        source = d.source if d else ("held out of sft" if role in metrics["held_out_from_sft"] else "-")
        lines.append(
            f"| {role} | {source} | {d.found if d else '-'} | {sum(d.dropped.values()) if d else '-'} "
            f"| {metrics['rows'][role]} |"
        )
    if "from_production" in metrics:
        lines += [
            "",
            "From production (the served model's traces with feedback, `data.sources.feedback`): "
            + ", ".join(f"**{n}** {role} rows" for role, n in metrics["from_production"].items())
            + " of the kept rows above; the snapshot they were read from is `snapshots/feedback.jsonl` here.",
        ]
        trust = params.data.sources.feedback.mlflow_traces.trust
        by_caller = metrics.get("feedback_by_caller") or {}
        lines += [
            "",
            f"Feedback rows by caller (`trust: {trust}`): "
            + (
                "; ".join(
                    f"{c}: " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in t.items())
                    for c, t in by_caller.items()
                )
                or "none"
            )
            + ".",
        ]
    drops = [(role, reason, n) for role, d in loaded.items() for reason, n in d.dropped.items()]
    if drops:
        lines += ["", "## Dropped rows", "", "| role | reason | rows |", "|---|---|---:|"]
        lines += [f"| {role} | {reason} | {n} |" for role, reason, n in drops]
        lines += ["", "First dropped rows:", ""] + [f"- {e}" for d in loaded.values() for e in d.examples]
    h = params.data.holdout
    if metrics["held_out_from_sft"]:
        lines += [
            "",
            f"Held out of sft: {', '.join(metrics['held_out_from_sft'])} (eval {h.eval}, dev {h.dev}, "
            f"seed {params.project.seed}" + (f", whole `{h.group_by}` groups" if h.group_by else "") + ").",
        ]
    lines += [
        "",
        "## Leakage",
        "",
        "Training rows removed because their prompt (or corpus text) is also a held-out "
        "prompt or reference: " + ", ".join(f"{r} {n}" for r, n in metrics["exact_duplicates_removed"].items()),
        "",
        f"Near-duplicates of eval rows among training rows (word {params.data.near_duplicate_ngram}-grams, "
        f"Jaccard >= {params.data.near_duplicate_threshold}): **{len(near)}**, kept.",
    ]
    for pair in sorted(near, key=lambda p: -p["jaccard"])[:NEAR_EXAMPLES]:
        lines += [f"- {pair['jaccard']}: train `{pair['train'][:120]}` ~ eval `{pair['held_out'][:120]}`"]
    if pii:
        from stages.common.pii import TYPES

        done = {
            "redact": "replaced by their type ([EMAIL], [PHONE], ...) before the split",
            "report": "**reported only: they stay in the data** (`scope.privacy.on_pii: report`)",
        }[pii["action"]]
        lines += [
            "",
            "## Personal data",
            "",
            f"Every record scanned (the scope declares personal data); values {done}.",
            "",
            "| role | records | " + " | ".join(TYPES) + " | examples (masked) |",
            "|---|---:|" + "---:|" * len(TYPES) + "---|",
        ]
        for role, found in pii["found"].items():
            shown = "; ".join(f"{t}: {', '.join(e)}" for t, e in pii["examples"][role].items()) or "-"
            lines.append(
                f"| {role} | {pii['records'][role]} | " + " | ".join(str(found[t]) for t in TYPES) + f" | {shown} |"
            )
        lines += [
            "",
            "Person names are not scanned: no name detector runs offline here (docs/your-project.md, Personal data).",
        ]
    if warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return stage_main("data", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
