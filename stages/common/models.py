"""Loading models exactly as a hub id would be loaded, rendering prompts for them, measuring likelihoods (generation
is stages/common/engines.py's)."""

from __future__ import annotations

from stages.common.errors import ProjectError
from stages.common.prompting import PromptFormat, PromptTooLong, Renderer, context_length


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("`project.device` is cuda but no CUDA GPU is visible to torch on this machine")
    return device


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_tokenizer(ref: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: str, device: str = "cpu", precision: str = "fp32", adapter: str | None = None):
    """A causal LM from a local folder or a hub id, optionally with a PEFT adapter on top."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch_dtype(precision))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.to(device).eval()


def candidate_model(spec: dict, device: str = "cpu"):
    """An evaluated variant (a spec from stages/common/variants.py) as one plain model: a LoRA adapter is merged into
    its base, so the registry and the bento hold a folder that loads without the base or a hub."""
    model = load_model(spec["ref"], device, adapter=spec["adapter"])
    if spec["adapter"] and not hasattr(model, "merge_and_unload"):  # a PEFT prompt-learning (soft prompt) model
        raise ProjectError(
            [
                f"the candidate {spec['adapter']} is a soft prompt (`adapt.technique: prompt_tuning`), "
                "which cannot be merged into the weights the server runs: the server does not run soft "
                "prompts yet; ship a lora or full variant (evaluate compares them), or set "
                "`adapt.technique: lora`"
            ]
        )
    if spec["adapter"]:
        model = model.merge_and_unload()
    return model, load_tokenizer(spec["adapter"] or spec["ref"])


def count_parameters(ref: str) -> int:
    """Parameter count from the config alone (meta device): no weights are loaded or downloaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ref)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def renderer_for(
    params, tokenizer, model_or_config, examples: list[dict] | None = None, max_new_tokens: int | None = None
) -> Renderer:
    """The project's prompt format (params `prompt:`) for one model: its tokenizer, its context length.
    `max_new_tokens`: the answer budget the prompt leaves room for (evaluate's, unless given; 0 for training,
    which renders prompt and answer together and generates nothing)."""
    fmt = PromptFormat(
        **params.prompt.model_dump(mode="json"),  # every field of params `prompt:` (a test holds the two equal)
        examples=list(examples or []),
        max_new_tokens=params.evaluate.max_new_tokens if max_new_tokens is None else max_new_tokens,
    )
    try:
        return Renderer(fmt, tokenizer, context_length(model_or_config))
    except ValueError as exc:
        raise ProjectError([str(exc)]) from None


def render_all(
    renderer: Renderer,
    records: list[dict],
    role: str,
    examples: list[dict] | None = None,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Prompts for every record; a record that cannot fit the model is a ProjectError naming its row."""
    prompts = []
    for i, record in enumerate(records):
        try:
            prompts.append(renderer.prompt(record, examples, max_new_tokens, where=f"{role} row {i + 1}"))
        except PromptTooLong as exc:
            raise ProjectError([str(exc)]) from None
    return prompts


def answer_perplexity(model, renderer: Renderer, records: list[dict], prompts: list[str]) -> float:
    """exp(mean NLL of the reference answer's tokens after the prompt): what a model knows, whatever its output
    format (lm-eval-harness style). The answer is rendered as training renders it."""
    import math

    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for record, prompt in zip(records, prompts, strict=True):
        prompt_ids = renderer.encode(prompt)
        answer_ids = renderer.tokenizer(renderer.completion(record), add_special_tokens=False)["input_ids"]
        if renderer.context:  # a reference longer than the room left is scored on the part that fits
            answer_ids = answer_ids[: max(1, renderer.context - len(prompt_ids))]
        ids = torch.tensor([prompt_ids + answer_ids], device=device)
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100  # score the answer only
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        total_nll += loss * len(answer_ids)
        total_tokens += len(answer_ids)
    return math.exp(total_nll / max(total_tokens, 1))


def perplexity(model, tokenizer, texts: list[str], max_length: int = 128) -> float:
    """Token-level perplexity on general text: the forgetting check (tuning should not wreck it)."""
    import math

    import torch

    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"].to(device)
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        total_loss += loss * (ids.shape[1] - 1)
        total_tokens += ids.shape[1] - 1
    return math.exp(total_loss / max(total_tokens, 1))
