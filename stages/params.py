"""The one place params.yaml is read and validated (pydantic, `extra="forbid"`: a typo is an error naming the key).

    python -m stages.params params.yaml      # prints the validated project or the problems, exit 2
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.errors import ExitStatus, ProjectError

# Metrics the evaluate stage computes; a KPI naming anything else is a contradiction caught at scope.
# answer_perplexity: how likely the model finds the reference answer after the prompt (lm-eval-harness style);
# it measures what a model knows even when its greedy output is not yet in the expected format.
EVAL_METRICS = ("rougeL", "bleu", "exact_match", "answer_perplexity", "latency_ms", "perplexity_general")
LOWER_IS_BETTER = frozenset({"answer_perplexity", "latency_ms", "perplexity_general"})


def best_of(values: dict[str, float], metric: str) -> str:
    """The key whose value is best for `metric` (lowest or highest)."""
    return (min if metric in LOWER_IS_BETTER else max)(values, key=values.get)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(str, Enum):
    question_answering = "question-answering"
    summarization = "summarization"
    classification = "classification"
    extraction = "extraction"
    generation = "generation"
    chat = "chat"


class Interface(str, Enum):
    chat = "chat"
    form = "form"
    one_shot_api = "one-shot-api"
    api_with_memory = "api-with-memory"


class DeploymentTarget(str, Enum):
    saas = "saas"
    cloud = "cloud"
    on_prem = "on-prem"


class Technique(str, Enum):
    prompt = "prompt"
    lora = "lora"
    qlora = "qlora"
    full = "full"


class AlignMethod(str, Enum):
    dpo = "dpo"
    none = "none"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]


class Project(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    description: str = ""
    seed: int = 17
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Paths(Strict):
    raw: str
    processed: str
    pretrain: str
    selection: str
    prompt: str
    sft: str
    aligned: str
    package: str
    scope_report: str
    eval_metrics: str
    eval_report: str
    metrics: str


class DataInventory(Strict):
    prompt_examples: NonNegInt
    sft_pairs: NonNegInt
    preference_pairs: NonNegInt
    knowledge_documents: NonNegInt


class Privacy(Strict):
    personal_data: bool


class Kpi(Strict):
    metric: str
    threshold: float
    direction: Literal["higher", "lower"]
    versus: Literal["absolute", "baseline"] = "absolute"


class Budget(Strict):
    gpu_memory_gib: Annotated[float, Field(ge=0)]
    training_hours: PosFloat


class Scope(Strict):
    task: Task
    interface: Interface
    data: DataInventory
    privacy: Privacy
    live_data_source: str | None
    languages: Annotated[list[str], Field(min_length=1)]
    deployment_target: DeploymentTarget
    licences: Annotated[list[str], Field(min_length=1)]
    kpis: Annotated[list[Kpi], Field(min_length=1)]
    budget: Budget


class Data(Strict):
    eval_size: PosInt
    dev_size: PosInt
    preference_size: NonNegInt
    general_fraction: Annotated[float, Field(gt=0, lt=1)]
    max_answer_chars: PosInt


class PretrainModel(Strict):
    name: str
    hidden_size: PosInt
    num_layers: PosInt
    num_heads: PosInt
    intermediate_size: PosInt
    steps: PosInt


class Pretrain(Strict):
    vocab_size: Annotated[int, Field(ge=300)]
    seq_len: PosInt
    batch_size: PosInt
    learning_rate: PosFloat
    models: list[PretrainModel] = []


class Candidate(Strict):
    name: str
    path: str | None = None
    hub_id: str | None = None
    licence: str
    languages: Annotated[list[str], Field(min_length=1)]
    hosting: Literal["self", "saas"] = "self"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.hub_id is None):
            raise ValueError(f"candidate '{self.name}': give exactly one of `path` (local folder) or `hub_id`")
        return self

    @property
    def ref(self) -> str:
        """What from_pretrained receives: a local folder or a hub id, loaded the same way."""
        return self.path or self.hub_id


class Select(Strict):
    candidates: Annotated[list[Candidate], Field(min_length=1)]
    few_shot: NonNegInt = 3
    rank_by: str = "answer_perplexity"
    max_new_tokens: PosInt = 40


class Lora(Strict):
    r: PosInt = 8
    lora_alpha: PosInt = 16
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: str | list[str] = "all-linear"


class Trainer(Strict):
    """The TRL/transformers training arguments a project may set; passed as `XConfig(**trainer)`."""

    max_steps: PosInt
    per_device_train_batch_size: PosInt = 8
    gradient_accumulation_steps: PosInt = 1
    learning_rate: PosFloat = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: NonNegInt = 0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_length: PosInt = 256
    logging_steps: PosInt = 10
    save_steps: PosInt = 100
    gradient_checkpointing: bool = False


class Adapt(Strict):
    technique: Technique
    prompt_shots: Annotated[list[NonNegInt], Field(min_length=1)] = [0, 1, 3]  # few-shot counts the prompt search tries
    precision: Precision = Precision.fp32
    lora: Lora = Lora()
    trainer: Trainer


class Align(Strict):
    method: AlignMethod
    precision: Precision = Precision.fp32
    beta: PosFloat = 0.1
    trainer: Trainer


class Evaluate(Strict):
    few_shot: NonNegInt = 3
    max_new_tokens: PosInt = 40
    batch_size: PosInt = 32


class Package(Strict):
    alias: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")] = "champion"  # set on the registered version


class Orchestration(Strict):
    retries: NonNegInt = 1
    retry_delay_seconds: list[NonNegInt] = [5]
    timeout_seconds: PosInt = 3600


class Params(Strict):
    project: Project
    paths: Paths
    scope: Scope
    data: Data
    pretrain: Pretrain
    select: Select
    adapt: Adapt
    align: Align
    evaluate: Evaluate
    package: Package = Package()
    orchestration: Orchestration = Orchestration()


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole file; every schema problem and contradiction in one ProjectError."""
    path = Path(path)
    if not path.is_file():
        raise ProjectError([f"{path}: file not found (run from the project root, or pass --params)"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProjectError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ProjectError([f"{path}: expected a mapping of sections (project, scope, ...), got {type(raw).__name__}"])
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _location(err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"{path}: unknown key `{where}` (a typo? remove it or fix its name)")
            elif err["type"] == "missing":
                problems.append(f"{path}: missing key `{where}`")
            else:
                problems.append(f"{path}: `{where}`: {err['msg']} (got {err.get('input')!r})")
        raise ProjectError(problems) from None
    problems = [f"{path}: {p}" for p in contradictions(params)]
    if problems:
        raise ProjectError(problems)
    return params


def contradictions(p: Params) -> list[str]:
    """Cross-field checks the schema alone cannot express. Pure: returns the problems, all at once."""
    problems = []
    s = p.scope
    if s.privacy.personal_data and s.deployment_target is DeploymentTarget.saas:
        problems.append("`scope.privacy.personal_data` is true but `scope.deployment_target` is saas: "
                        "personal (GDPR) data may not leave your infrastructure; deploy to cloud or on-prem")
    for c in p.select.candidates:
        if s.privacy.personal_data and c.hosting == "saas":
            problems.append(f"`select.candidates.{c.name}` is SaaS-hosted but `scope.privacy.personal_data` is true: "
                            "use a self-hosted model")
        if c.licence not in s.licences:
            problems.append(f"`select.candidates.{c.name}.licence` {c.licence!r} is not in `scope.licences` {s.licences}")
    for i, kpi in enumerate(s.kpis):
        if kpi.metric not in EVAL_METRICS:
            problems.append(f"`scope.kpis.{i}.metric` {kpi.metric!r} is not computed by the evaluator "
                            f"(one of {', '.join(EVAL_METRICS)})")
    if p.select.rank_by not in EVAL_METRICS:
        problems.append(f"`select.rank_by` {p.select.rank_by!r} is not one of {', '.join(EVAL_METRICS)}")
    allowed = allowed_techniques(s)
    if p.adapt.technique.value not in allowed["adapt"]:
        problems.append(f"`adapt.technique` is {p.adapt.technique.value} but the data inventory "
                        f"(`scope.data`) only supports {allowed['adapt']}: {allowed['why']}")
    if p.align.method.value not in allowed["align"]:
        problems.append(f"`align.method` is {p.align.method.value} but `scope.data.preference_pairs` is "
                        f"{s.data.preference_pairs}: preference data is needed (or set `align.method: none`)")
    if p.adapt.technique is Technique.qlora and s.budget.gpu_memory_gib == 0:
        problems.append("`adapt.technique` is qlora, which needs a GPU, but `scope.budget.gpu_memory_gib` is 0")
    if p.align.method is not AlignMethod.none and p.adapt.technique is Technique.prompt:
        problems.append("`align.method` needs a tuned model but `adapt.technique` is prompt: set align.method: none")
    names = [m.name for m in p.pretrain.models]
    if len(set(names)) != len(names):
        problems.append("`pretrain.models`: names must be unique")
    cands = [c.name for c in p.select.candidates]
    if len(set(cands)) != len(cands):
        problems.append("`select.candidates`: names must be unique")
    built = {str(Path(p.paths.pretrain) / n) for n in names}
    for c in p.select.candidates:
        # A local candidate must exist now, unless the pretrain stage is about to build it.
        if c.path and str(Path(c.path)) not in built and not Path(c.path).is_dir():
            problems.append(f"`select.candidates.{c.name}.path`: {c.path} does not exist (and no "
                            "`pretrain.models` entry builds it); fix the path or use `hub_id`")
    for m in p.pretrain.models:
        if m.hidden_size % m.num_heads:
            problems.append(f"`pretrain.models.{m.name}`: hidden_size {m.hidden_size} is not divisible by "
                            f"num_heads {m.num_heads}")
    for section in ("adapt", "align"):
        if getattr(p, section).precision is Precision.bf16 and p.project.device == "cpu":
            problems.append(f"`{section}.precision` bf16 on `project.device` cpu is emulated and ~10x slower; use fp32")
    return problems


# Data size decides what adaptation is worth trying (tens of examples: prompting; thousands: PEFT).
SFT_PAIRS_FOR_PEFT = 100
SFT_PAIRS_FOR_FULL = 10_000
PREFERENCE_PAIRS_FOR_DPO = 100


def allowed_techniques(scope: Scope) -> dict:
    d = scope.data
    adapt = ["prompt"]
    if d.sft_pairs >= SFT_PAIRS_FOR_PEFT:
        adapt += ["lora", "qlora"]
    if d.sft_pairs >= SFT_PAIRS_FOR_FULL:
        adapt.append("full")
    align = ["none"] + (["dpo"] if d.preference_pairs >= PREFERENCE_PAIRS_FOR_DPO else [])
    why = (f"{d.sft_pairs} SFT pairs (PEFT from {SFT_PAIRS_FOR_PEFT}, full fine-tuning from {SFT_PAIRS_FOR_FULL}), "
           f"{d.preference_pairs} preference pairs (DPO from {PREFERENCE_PAIRS_FOR_DPO})")
    return {"adapt": adapt, "align": align, "why": why}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        params = load_params(args[0] if args else "params.yaml")
    except ProjectError as exc:
        print(exc, file=sys.stderr)
        return ExitStatus.INVALID_PROJECT
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return ExitStatus.OK


if __name__ == "__main__":
    raise SystemExit(main())
