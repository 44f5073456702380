"""Loading a team's data: one source per role (a file, a folder, a dataset id or a live source's snapshot) read,
mapped into records, checked and deduplicated; and production feedback read back as training records.

    python -m stages.common.source_report    # what `lifecycle validate` reports per role: rows found, dropped, why

Reading the formats is stages/common/readers.py, shaping a row into its role's record stages/common/records.py.
Structural problems (a row that cannot be read, a missing field) are raised for all roles at once; a row that can be
read but is unusable (an empty field, too long, a duplicate, chosen == rejected) is dropped and counted with its
reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.errors import ProjectError
from stages.common.guardrails import breaches, resolve
from stages.common.params import FEEDBACK, FEEDBACK_ROLES, QA_ROLES, ROLES, TEXT_ROLES
from stages.common.readers import DOCUMENTS, TABULAR, UNREADABLE, Problems, read_dataset, read_files, read_rows
from stages.common.records import field_mapping_problems, map_fields, normalize, to_record, unusable

MAX_EXAMPLES = 5  # dropped rows quoted per role


def holdout_size(size: float, total: int) -> int:
    """`data.holdout` sizes: an integer is rows, a number below 1 a fraction of `total`."""
    return int(size) if size >= 1 else round(size * total)


@dataclass
class RoleData:
    """One role as loaded: the records kept, the rows found, and the dropped ones counted by reason."""

    role: str
    source: str
    records: list[dict] = field(default_factory=list)
    found: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # "file:line: reason" of the first dropped rows
    callers: dict[str, Counter] = field(default_factory=dict)  # feedback: {caller: {taken, pending, ...}}

    def drop(self, where: str, reason: str) -> None:
        self.dropped[reason.split(" (")[0]] += 1  # counted by kind; the example keeps the figures
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def summary(self) -> dict:
        return {
            "source": self.source,
            "rows_found": self.found,
            "rows_kept": len(self.records),
            "rows_dropped": dict(self.dropped),
            "first_dropped": self.examples,
        }


def dedupe_key(role: str, record: dict) -> tuple:
    """What two records of a role share when one repeats the other (texts compared normalized)."""
    if role in TEXT_ROLES:
        return (normalize(record["text"]),)
    if role == "preference":
        return normalize(record["prompt"]), normalize(record["chosen"]), normalize(record["rejected"])
    if role == "sft":
        return normalize(record["prompt"]), normalize(record["completion"])
    return (normalize(record["prompt"]),)


def load_role(role: str, source, params) -> RoleData:
    """Read, map, check and deduplicate one role's source; structural problems raise, all of them at once."""
    data = RoleData(role, source.label)
    mapping = field_mapping_problems(role, source.fields, label=source.label)
    if mapping:  # before a row is read: a params.yaml mistake, not the data's
        raise ProjectError(mapping)
    clashes: dict[tuple, list[str]] = {}  # per set of columns: reported once, not on every row of a CSV
    problems = Problems()
    template_fields = params.prompt.fields if role not in TEXT_ROLES else []
    labels = params.scope.labels if params.scope.task.value == "classification" else None
    group_by = params.data.holdout.group_by if role == "sft" and params.data.sources.eval is None else None
    seen: set[tuple] = set()

    if source.dataset:
        rows = read_dataset(source, role)
    else:
        path = snapshot(role, source, params) if source.live else Path(source.path)
        rows = read_files(path, TABULAR + DOCUMENTS if role in TEXT_ROLES else TABULAR, problems)
    for where, row in rows:
        data.found += 1
        if UNREADABLE in row:  # a document is skipped, by name; the role fails only if nothing usable is left
            data.drop(where, f"unreadable ({row[UNREADABLE]})")
            continue
        if source.fields:
            columns = tuple(row)
            if columns not in clashes:
                clashes[columns] = field_mapping_problems(role, source.fields, columns)
                for clash in clashes[columns]:
                    problems.add(f"{where} (and every row with the same columns): {clash}")
            if clashes[columns]:
                continue
        try:
            mapped = map_fields(row, source.fields, where) if source.fields else row
            record = to_record(role, mapped, where, template_fields)
        except ValueError as exc:
            problems.add(str(exc))
            continue
        if group_by is not None:
            if group_by not in mapped:
                problems.add(
                    f"{where}: no field `{group_by}` (`data.holdout.group_by`); the row has "
                    f"{', '.join(f'`{c}`' for c in mapped)}"
                )
                continue
            record["group"] = str(mapped[group_by])
        if labels is not None and role in QA_ROLES:
            answers = [record["completion"]] if role == "sft" else record["references"]
            stray = [a for a in answers if a.strip() not in labels]
            if stray:
                problems.add(
                    f"{where}: answer {stray[0]!r} is not one of `scope.labels` {labels}; fix the row or "
                    "the declared label set"
                )
                continue
        reason = unusable(role, record, params.data.max_length)
        if reason is None:
            key = dedupe_key(role, record)
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason:
            data.drop(where, reason)
            continue
        data.records.append(record)
    if data.found == 0 and not problems.items:
        problems.add(f"`data.sources.{role}` ({source.label}): no rows found")
    elif not data.records and not problems.items:
        problems.add(
            f"`data.sources.{role}` ({source.label}): nothing usable is left of {data.found} rows; "
            + "; ".join(data.examples)
        )
    if problems.items:
        raise ProjectError([f"`data.sources.{role}`: {p}" for p in problems.done()])
    return data


def snapshot(role: str, source, params) -> Path:
    """A live source's snapshot file (stages/common/live.py writes it); missing: say how to make it."""
    from stages.common.live import snapshot_path

    path = snapshot_path(params.paths.snapshots, role)
    if not path.is_file():
        raise ProjectError(
            [
                f"`data.sources.{role}` ({source.label}) is read from its snapshot {path}, which does not exist: "
                "run `lifecycle snapshot` (`lifecycle run` does it before the pipeline)"
            ]
        )
    return path


def load_feedback(params) -> dict[str, RoleData]:
    """Production feedback (the `feedback` role's snapshot of rated traces) as training records: a correction is
    an sft row (prompt -> correction) and a preference pair (chosen: the correction, rejected: what was served); an
    approved answer (rating >= `min_rating`) is an sft row with `use_upvoted`; anything else teaches nothing and is
    counted as dropped, with its reason."""
    source = params.data.sources.feedback
    traces = source.mlflow_traces
    path = snapshot(FEEDBACK, source, params)
    out = {role: RoleData(role, f"{source.label} -> {role}") for role in FEEDBACK_ROLES}
    sft, pairs = out["sft"], out["preference"]
    problems = Problems()
    seen: set[tuple] = set()
    rules = resolve(params)  # what evaluate holds the model's answers to, a correction is held to as well
    for where, row in read_rows(path, problems):
        sft.found += 1
        missing = [k for k in ("prompt", "served", "rating", "correction") if k not in row]
        if missing:
            problems.add(f"{where}: no {', '.join(missing)}: not a feedback snapshot; run `lifecycle snapshot` again")
            continue
        prompt, served, correction = row["prompt"].strip(), (row["served"] or "").strip(), row["correction"]
        correction = correction.strip() if isinstance(correction, str) else None
        rating = row["rating"]
        made = []
        if not prompt:
            sft.drop(where, "no prompt in the trace (tracing off, or redacted away)")
            continue
        if correction:
            made.append(("sft", {"prompt": prompt, "completion": correction}))
            if served and normalize(served) != normalize(correction):
                made.append(("preference", {"prompt": prompt, "chosen": correction, "rejected": served}))
        elif isinstance(rating, (int, float)) and rating >= traces.min_rating:
            if traces.use_upvoted and served:
                made.append(("sft", {"prompt": prompt, "completion": served}))
            else:
                sft.drop(where, "approved, not used (`mlflow_traces.use_upvoted` is false)")
        else:
            sft.drop(where, "rated low without a correction: no better answer to learn")
        if made:
            caller = row.get("caller") or "anonymous"
            tally = sft.callers.setdefault(caller, Counter())
            why, kind = distrusted(row, traces, caller)
            if why is None and tally["taken"] >= traces.max_rows_per_caller:
                why, kind = f"over max_rows_per_caller ({traces.max_rows_per_caller} from {caller})", "over_limit"
            if why:
                tally[kind] += 1
                sft.drop(where, why)
                continue
            tally["taken"] += 1
        for role, record in made:
            reason = unusable(role, record, params.data.max_length)
            answer = record.get("completion", record.get("chosen", ""))
            if reason is None and (broken := breaches(answer, rules, params.scope.labels)):
                reason = f"breaks a guardrail of `evaluate.guardrails` ({'; '.join(broken)})"
            key = dedupe_key(role, record)
            if reason is None and key in seen:
                reason = "duplicate"
            seen.add(key)
            if reason:
                out[role].drop(where, reason)
            else:
                out[role].records.append(record)
    if problems.items:
        raise ProjectError([f"`data.sources.{FEEDBACK}`: {p}" for p in problems.done()])
    pairs.found = sft.found
    return out


def distrusted(row: dict, traces, caller: str) -> tuple[str | None, str]:
    """Why a feedback row may not become training data under `mlflow_traces.trust` (None: it may), and its kind
    for the per-caller count: pending, rejected or untrusted."""
    from stages.common.live import APPROVED, REJECTED

    if traces.trust == "all":
        return None, "taken"
    if row.get("review") == REJECTED:
        return f"rejected by a reviewer ({row.get('reviewed_by')})", "rejected"
    if traces.trust == "callers":
        if caller in traces.trusted_callers:
            return None, "taken"
        return f"not a trusted caller ({caller}; trust: callers)", "untrusted"
    if row.get("review") == APPROVED:
        return None, "taken"
    return f"pending review ({caller}; trust: reviewed: `lifecycle review`)", "pending"


def load_all(params) -> dict[str, RoleData]:
    """Every declared role; the problems of all roles are raised together."""
    loaded, problems = {}, []
    for role in ROLES:
        source = getattr(params.data.sources, role)
        if source is None:
            continue
        try:
            loaded[role] = load_role(role, source, params)
        except ProjectError as exc:
            problems += exc.problems
    if problems:
        raise ProjectError(problems)
    return loaded
