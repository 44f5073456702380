"""Every rule across fields of params.yaml: the project checklist's cross-question rules, the pipeline's
contradictions, the lifecycle phase's minimums and what the data supports.

`problems(p)` and `warnings(p)` need params.yaml alone (load_params reports them with the schema's problems, and
with those of the files it names: stages/common/file_checks.py); `phase_rules(p, counts)` and
`allowed_techniques(scope, counts)` also use the rows the data holds, which the scope stage counts. Each candidate
against the scope is stages/common/candidates.py. Each message starts with the key to change and says what to do.
Pure: they read no file and return the problems, all at once.
"""

from __future__ import annotations

from stages.common.candidates import COMMERCIAL_FROM, forbids_commercial_use, in_region
from stages.common.params import (
    ROLES,
    AlignMethod,
    DeploymentTarget,
    Params,
    Phase,
    Precision,
    Scope,
    Task,
    Technique,
)
from stages.common.records import field_mapping_problems

MVP_MIN_EVAL_ROWS = 50  # below this a KPI's estimate is noise (a 95 % CI of a rate spans ~±0.14 at 50)
RELEASE_MIN_EVAL_ROWS = 300  # a Release without `confidence: ci` KPIs needs an eval split at least this big


def problems(p: Params) -> list[str]:
    """Every problem params.yaml alone shows (the files it names are stages/common/file_checks.py's)."""
    return checklist_problems(p) + contradictions(p)


def checklist_problems(p: Params) -> list[str]:
    """Contradictions between checklist answers (and the candidates), params.yaml alone."""
    s = p.scope
    out = []
    if (
        s.deployment_target is not None
        and s.deployment_target.value in ("cloud", "saas")
        and s.residency.region != "any"
    ):
        if s.residency.deployment_region is None:
            out.append(
                f"`scope.residency.deployment_region`: the data must stay in {s.residency.region!r} and the "
                f"target is {s.deployment_target.value}: declare where it runs (e.g. eu-west-1), or deploy "
                "on-prem"
            )
        elif not in_region(s.residency.deployment_region, s.residency.region):
            out.append(
                f"`scope.residency.deployment_region` {s.residency.deployment_region!r} is outside the "
                f"residency region {s.residency.region!r}: pick a region in it, or deploy on-prem"
            )
    covered = {lang for c in p.select.candidates for lang in c.languages}
    for lang in s.languages:
        if lang not in covered:
            out.append(
                f"`scope.languages` lists {lang!r} but no candidate in `select.candidates` covers it: add one "
                "that does (`lifecycle catalog` lists languages), or drop the language"
            )
    fmt = s.output_format
    if fmt.type == "json" and fmt.json_schema is None:
        out.append(
            "`scope.output_format` is json but `json_schema` is not set: give the JSON Schema file every "
            "answer must follow"
        )
    elif fmt.type != "json" and fmt.json_schema is not None:
        out.append(
            f"`scope.output_format.json_schema` is set but the output format is {fmt.type}: "
            "set `type: json`, or remove the schema"
        )
    for role in ("training", "serving"):
        m = getattr(s.hardware, role)
        if (m.gpu is not None or m.count) and not m.gpu_memory_gib:
            out.append(f"`scope.hardware.{role}.gpu_memory_gib` is 0 but a GPU is declared: give its memory in GiB")
        if m.gpu_memory_gib and not m.count:
            out.append(f"`scope.hardware.{role}.count` is 0 but `gpu_memory_gib` is {m.gpu_memory_gib}: how many GPUs?")
    if p.serve.resources.gpu > s.hardware.serving.count:
        out.append(
            f"`serve.resources.gpu` asks for {p.serve.resources.gpu} GPUs, `scope.hardware.serving.count` "
            f"has {s.hardware.serving.count}: declare the serving GPUs, or lower the request"
        )
    if any(c.endpoint for c in p.select.candidates) and p.select.rank_by == "answer_perplexity":
        out.append(
            "`select.rank_by` answer_perplexity needs the log-probabilities of the reference answers, which "
            "an API candidate (`endpoint:`) does not return: rank by a text metric, e.g. rougeL"
        )
    return out + phase_problems(p)


def warnings(p) -> list[str]:
    """Risky but legal answers: said every run, never refused."""
    s = p.scope
    out = []
    if s.ui.value == "chat" and s.interface.value == "one-shot-api":
        out.append(
            "`scope.ui` is chat but `scope.interface` is one-shot-api: each turn is answered without the "
            "conversation; use api-with-memory or chat"
        )
    if s.privacy.personal_data and s.residency.retention_days is None and s.phase.value != "release":
        out.append(
            "`scope.residency.retention_days` is not set and the project holds personal data: GDPR's "
            "storage limitation wants a retention period (a Release requires one)"
        )
    if s.serving.p95_latency_ms and not any(k.metric == "latency_ms" for k in s.kpis):
        out.append(
            f"`scope.serving.p95_latency_ms` is {s.serving.p95_latency_ms} but no KPI gates on latency_ms: "
            "add one so evaluation holds the model to it"
        )
    if s.budget.monthly_serving_usd is not None and not s.serving.requests_per_month:
        out.append(
            "`scope.budget.monthly_serving_usd` is set but `scope.serving.requests_per_month` is 0: API "
            "costs cannot be held against the budget without the expected traffic"
        )
    traces = p.data.sources.feedback.mlflow_traces if p.data.sources.feedback else None
    if traces and traces.trust == "all":
        out.append(
            "`data.sources.feedback.mlflow_traces.trust` is all: every API key holder's corrections become "
            "training data of the next model; use reviewed (`lifecycle review`) or callers with trusted_callers"
        )
    if traces and traces.trust == "callers" and not traces.trusted_callers:
        out.append(
            "`data.sources.feedback.mlflow_traces.trust` is callers but `trusted_callers` is empty: no feedback "
            "will be trained on"
        )
    apis = [c.name for c in p.select.candidates if c.endpoint]
    if apis and p.adapt.technique.value != "prompt":
        out.append(
            f"`select.candidates` {apis} are API models: they are measured and ranked for the record but "
            f"never tuned, so adapt ({p.adapt.technique.value}) starts from the best local candidate"
        )
    for c in p.select.candidates:
        if forbids_commercial_use(c) and s.phase.rank < COMMERCIAL_FROM.rank:
            out.append(
                f"`select.candidates.{c.name}`: {c.entry.licence} forbids commercial use; fine for "
                f"{s.phase.value}, refused from mvp on"
            )
    return out


def phase_rules(p, counts: dict | None = None) -> list[tuple[str, str | None, bool]]:
    """The rules of the project's phase: (rule, problem or None, whether it needs the data's counts). With no
    counts the count rules are listed as not yet checked (problem None)."""
    s = p.scope
    rules = []

    def rule(text: str, broken: bool, message: str, needs_counts: bool = False):
        rules.append((text, message if broken else None, needs_counts))

    if s.phase.rank >= Phase.mvp.rank:
        rule(
            "a deployment target",
            s.deployment_target is None,
            f"`scope.deployment_target` is null but phase {s.phase.value} ships a model: set saas, cloud or on-prem",
        )
        eval_rows = counts.get("eval_rows") if counts else None
        rule(
            f"KPIs on a held-out eval split of at least {MVP_MIN_EVAL_ROWS} rows",
            eval_rows is not None and eval_rows < MVP_MIN_EVAL_ROWS,
            f"`data.holdout.eval` (or `data.sources.eval`): the eval split has {eval_rows} rows; phase "
            f"{s.phase.value} needs at least {MVP_MIN_EVAL_ROWS} for its KPIs to mean anything",
            needs_counts=True,
        )
    if s.phase.rank >= COMMERCIAL_FROM.rank:
        for c in p.select.candidates:
            entry = c.entry
            rule(
                f"candidate {c.name} may be used commercially",
                forbids_commercial_use(c),
                f"`select.candidates.{c.name}`: its licence {entry.licence if entry else ''} forbids commercial "
                f"use, which phase {s.phase.value} is: remove it",
            )
    if s.phase.rank >= Phase.release.rank:
        with_ci = any(k.confidence == "ci" for k in s.kpis)
        eval_rows = counts.get("eval_rows") if counts else None
        rule(
            f"a KPI with `confidence: ci`, or an eval split of at least {RELEASE_MIN_EVAL_ROWS} rows",
            not with_ci and eval_rows is not None and eval_rows < RELEASE_MIN_EVAL_ROWS,
            f"`scope.kpis`: a release gates with confidence: give a KPI `confidence: ci`, or at least "
            f"{RELEASE_MIN_EVAL_ROWS} eval rows (there are {eval_rows})",
            needs_counts=not with_ci,
        )
        rule(
            "a forgetting check",
            p.evaluate.max_forgetting is None or p.data.sources.general is None,
            "`evaluate.max_forgetting`: a release must show tuning did not break general ability: set it and a "
            "`data.sources.general` source",
        )
        if s.privacy.personal_data:
            rule(
                "personal data redacted or refused, not only reported",
                s.privacy.on_pii == "report",
                "`scope.privacy.on_pii` is report: a release with personal data must redact or fail",
            )
            rule(
                "a retention period for personal data",
                s.residency.retention_days is None,
                "`scope.residency.retention_days`: a release holding personal data declares how long it keeps "
                "prompts and answers",
            )
    return rules


def phase_problems(p, counts: dict | None = None) -> list[str]:
    """The phase's broken rules: without counts those params.yaml alone decides, with counts those that needed
    the data's rows (so the two calls never report a rule twice)."""
    return [
        message
        for _, message, needs_counts in phase_rules(p, counts)
        if message and needs_counts == (counts is not None)
    ]


def phase_report(p, counts: dict | None = None) -> dict:
    """For reports/scope.json: which phase's rules applied and each verdict."""
    return {
        "phase": p.scope.phase.value,
        "rules": [
            {"rule": text, "passed": message is None, **({"problem": message} if message else {})}
            for text, message, _ in phase_rules(p, counts)
        ],
    }


def contradictions(p: Params) -> list[str]:
    """Cross-field checks the schema alone cannot express. Pure: returns the problems, all at once."""
    problems = []
    s = p.scope
    if s.privacy.personal_data and s.deployment_target is DeploymentTarget.saas:
        problems.append(
            "`scope.privacy.personal_data` is true but `scope.deployment_target` is saas: "
            "personal (GDPR) data may not leave your infrastructure; deploy to cloud or on-prem"
        )
    for c in p.select.candidates:
        if s.privacy.personal_data and c.hosting == "saas":
            problems.append(
                f"`select.candidates.{c.name}` is SaaS-hosted but `scope.privacy.personal_data` is true: "
                "use a self-hosted model"
            )
        if c.licence not in s.licences:
            problems.append(
                f"`select.candidates.{c.name}.licence` {c.licence!r} is not in `scope.licences` {s.licences}"
            )
    if s.privacy.personal_data and p.evaluate.judge.model and p.evaluate.judge.hosting == "saas":
        problems.append(
            "`evaluate.judge` is SaaS-hosted but `scope.privacy.personal_data` is true: the eval data "
            "would leave your infrastructure; use a self-hosted judge model"
        )
    if s.privacy.personal_data and p.serve.tracing == "full":
        problems.append(
            "`serve.tracing` is full but `scope.privacy.personal_data` is true: production prompts would be "
            "stored with the personal data in them; use `redacted` (replaced by its type first) or `off`"
        )
    problems += metric_problems(p)
    if s.task is Task.classification and len(s.labels) < 2:
        problems.append(
            "`scope.task` is classification but `scope.labels` lists fewer than 2 labels: declare the "
            "answer set, e.g. labels: [billing, bug, feature-request]"
        )
    problems += source_problems(p)
    try:
        p.prompt.fields  # noqa: B018 -- the property raises on a bad template
    except ValueError as exc:
        problems.append(
            f"`prompt.template` {p.prompt.template!r} is not a valid template ({exc}); "
            "write fields as {prompt}, and a literal brace as {{ or }}"
        )
    try:
        p.prompt.context_template.format(text="")
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(
            f"`prompt.context_template` {p.prompt.context_template!r} is not a valid template ({exc}): "
            "it may name only {text}, the retrieved chunk"
        )
    problems += technique_problems(p, allowed_techniques(s))
    if p.adapt.technique is Technique.qlora and s.hardware.training.gpu_memory_gib == 0:
        problems.append(
            "`adapt.technique` is qlora, which needs a GPU, but `scope.hardware.training.gpu_memory_gib` "
            "is 0: declare the training GPU, or use lora"
        )
    if p.align.methods and p.adapt.technique is Technique.prompt:
        problems.append("`align.methods` needs a tuned model but `adapt.technique` is prompt: set `align.methods: []`")
    if p.align.methods and p.adapt.technique is Technique.prompt_tuning:
        problems.append(
            "`align.methods` starts from the SFT model merged into its base, but a soft prompt "
            "(`adapt.technique: prompt_tuning`) cannot be merged into the weights: set `align.methods: []`, "
            "or tune with lora or full"
        )
    problems += rlhf_problems(p)
    if p.adapt.raft.enabled and p.data.sources.knowledge is None:
        problems.append(
            "`adapt.raft` trains with retrieved chunks but `data.sources` has no `knowledge` source to "
            "retrieve from: declare one, or set adapt.raft: false"
        )
    if p.adapt.raft.enabled and p.adapt.technique is Technique.prompt:
        problems.append(
            "`adapt.raft` is a way to fine-tune but `adapt.technique` is prompt: choose lora or full, "
            "or set adapt.raft: false"
        )
    names = [m.name for m in p.pretrain.models]
    if len(set(names)) != len(names):
        problems.append("`pretrain.models`: names must be unique")
    cands = [c.name for c in p.select.candidates]
    if len(set(cands)) != len(cands):
        problems.append("`select.candidates`: names must be unique")
    for m in p.pretrain.models:
        if m.hidden_size % m.num_heads:
            problems.append(
                f"`pretrain.models.{m.name}`: hidden_size {m.hidden_size} is not divisible by num_heads {m.num_heads}"
            )
    for section in ("adapt", "align"):
        if getattr(p, section).precision is Precision.bf16 and p.project.device == "cpu":
            problems.append(f"`{section}.precision` bf16 on `project.device` cpu is emulated and ~10x slower; use fp32")
    return problems


def metric_problems(p: Params) -> list[str]:
    """KPIs, `select.rank_by` and `evaluate.metrics` against the metric registry: names, ranges, directions."""
    from stages.common import metrics

    problems = []
    for name in p.evaluate.metrics or []:
        if name not in metrics.REGISTRY:
            problems.append(
                f"`evaluate.metrics` names {name!r}, which is not a known metric (one of {', '.join(metrics.REGISTRY)})"
            )
    computed = metrics.project_metrics(p)
    for i, kpi in enumerate(p.scope.kpis):
        metric = metrics.REGISTRY.get(kpi.metric)
        if metric is None or kpi.metric not in computed:
            problems.append(
                f"`scope.kpis.{i}.metric` {kpi.metric!r} is not computed for a {p.scope.task.value} "
                f"project (computed: {', '.join(computed)}; add it to `evaluate.metrics` if it is a "
                "known metric)"
            )
            continue
        problem = metric.threshold_problem(kpi.threshold, kpi.versus)
        if problem:
            problems.append(f"`scope.kpis.{i}.threshold` {kpi.threshold}: {problem}")
        if kpi.confidence == "ci" and metric.compute is None:
            problems.append(
                f"`scope.kpis.{i}.confidence` ci: {kpi.metric} is measured on the model as one number, "
                "with no confidence interval; use `confidence: point`"
            )
    if p.evaluate.max_forgetting is not None and p.data.sources.general is None:
        problems.append(
            "`evaluate.max_forgetting` gates on the general split's perplexity, but "
            "`data.sources.general` is not set: add general text or set `max_forgetting: null`"
        )
    rank = metrics.REGISTRY.get(p.select.rank_by)
    rankable = metrics.selection_metrics(p)
    if rank is None or p.select.rank_by not in rankable or rank.higher_is_better is None:
        problems.append(
            f"`select.rank_by` {p.select.rank_by!r} cannot rank candidates: use one of "
            f"{', '.join(m for m in rankable if metrics.REGISTRY[m].higher_is_better is not None)}"
        )
    return problems


def source_problems(p: Params) -> list[str]:
    """Which roles the plan needs; each source's `fields:` mapping (two columns into one field lose one)."""
    problems = []
    src = p.data.sources
    for role in ROLES:
        source = getattr(src, role)
        if source is not None:
            problems += field_mapping_problems(role, source.fields)
    if src.sft is None and (src.eval is None or src.dev is None):
        problems.append(
            "`data.sources`: without an `sft` source both `eval` and `dev` sources are needed "
            "(held-out splits are made from `sft`)"
        )
    if src.sft is None and p.adapt.technique is not Technique.prompt:
        problems.append(f"`adapt.technique` is {p.adapt.technique.value} but `data.sources.sft` is not set")
    if src.preference is None and p.align.methods:
        problems.append(
            f"`align.methods` lists {', '.join(m.value for m in p.align.methods)} but "
            "`data.sources.preference` is not set"
        )
    if src.corpus is None and p.pretrain.models:
        problems.append(
            "`pretrain.models` builds from-scratch candidates but `data.sources.corpus` (their "
            "pretraining text) is not set"
        )
    return problems


# Data size decides what adaptation is worth trying (tens of examples: prompting; thousands: PEFT).
SFT_PAIRS_FOR_PEFT = 100


SFT_PAIRS_FOR_FULL = 10_000


PREFERENCE_PAIRS_FOR_DPO = 100


def technique_problems(p: Params, allowed: dict) -> list[str]:
    """The planned technique and alignment against what the data supports (declared, or found)."""
    problems = []
    if p.adapt.technique.value not in allowed["adapt"]:
        problems.append(
            f"`adapt.technique` is {p.adapt.technique.value} but the data supports only "
            f"{allowed['adapt']}: {allowed['why']}"
        )
    for method in p.align.methods:
        if method.value not in allowed["align"]:
            problems.append(
                f"`align.methods` lists {method.value} but the data supports only {allowed['align']}: "
                f"{allowed['why']} (or remove it: `align.methods: []` is no alignment)"
            )
    return problems


def rlhf_problems(p: Params) -> list[str]:
    """What TRL's online trainers would reject mid-run, and a rule that cannot be read, named here."""
    import re

    if AlignMethod.rlhf not in p.align.methods:
        return []
    problems = []
    r = p.align.rlhf
    batch = r.trainer.per_device_train_batch_size * r.trainer.gradient_accumulation_steps
    if batch % r.num_generations:
        problems.append(
            f"`align.rlhf.trainer.per_device_train_batch_size` x gradient_accumulation_steps ({batch}) "
            f"must be a multiple of `align.rlhf.num_generations` ({r.num_generations}): each prompt's "
            "completions are scored as one group"
        )
    if r.rules.format:
        try:
            re.compile(r.rules.format)
        except re.error as exc:
            problems.append(f"`align.rlhf.rules.format` {r.rules.format!r} is not a regular expression: {exc}")
    return problems


def allowed_techniques(scope: Scope, counts: dict | None = None) -> dict:
    """What the data supports: from `scope.data` (declared), or from the rows found when `counts` is given."""
    sft = counts["sft_pairs"] if counts else scope.data.sft_pairs
    pref = counts["preference_pairs"] if counts else scope.data.preference_pairs
    adapt = ["prompt"]
    if sft >= SFT_PAIRS_FOR_PEFT:
        adapt += ["prompt_tuning", "lora", "qlora"]
    if sft >= SFT_PAIRS_FOR_FULL:
        adapt.append("full")
    align = ["none"] + (["dpo", "rlhf"] if pref >= PREFERENCE_PAIRS_FOR_DPO else [])
    held_out = counts.get("sft_held_out", 0) if counts else 0
    why = (
        f"{sft} SFT pairs (PEFT from {SFT_PAIRS_FOR_PEFT}, full fine-tuning from {SFT_PAIRS_FOR_FULL}), "
        f"{pref} preference pairs (DPO and RLHF from {PREFERENCE_PAIRS_FOR_DPO})"
        + (" found in the data" if counts else " declared in `scope.data`")
        + (
            f"; `data.holdout` keeps {held_out} rows of the sft source for the eval and dev splits: lower it, "
            "or give `data.sources.eval` and `dev` sources of their own"
            if held_out and sft < SFT_PAIRS_FOR_PEFT
            else ""
        )
    )
    return {"adapt": adapt, "align": align, "why": why}
