"""Loading models exactly as a hub id would be loaded, prompting, and batched greedy generation."""

from __future__ import annotations

import time
from dataclasses import dataclass

ANSWER_PREFIX = "Answer:"


def question_prompt(question: str) -> str:
    """The prompt every variant answers (few-shot examples, when any, come before it)."""
    return f"Question: {question}\n{ANSWER_PREFIX}"


def few_shot_prompt(question: str, examples: list[dict]) -> str:
    shots = "".join(f"{question_prompt(e['question'])} {e['answer']}\n\n" for e in examples)
    return shots + question_prompt(question)


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


def count_parameters(ref: str) -> int:
    """Parameter count from the config alone (meta device): no weights are loaded or downloaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ref)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@dataclass
class Generations:
    answers: list[str]
    seconds_per_answer: float


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32,
             progress: str | None = None) -> Generations:
    """Greedy answers, cut at the first newline (answers are one line). Left padding for batching."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    answers = []
    device = next(model.parameters()).device
    start = time.perf_counter()
    batches = range(0, len(prompts), batch_size)
    for i in tqdm(batches, desc=progress, disable=progress is None, unit="batch"):
        batch = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for row in out[:, batch["input_ids"].shape[1]:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            answers.append(text.strip().split("\n")[0].strip())
    elapsed = time.perf_counter() - start
    return Generations(answers, elapsed / max(len(prompts), 1))


def answer_perplexity(model, tokenizer, prompts: list[str], answers: list[str]) -> float:
    """exp(mean NLL of the answer tokens given the prompt): a model's knowledge, whatever its output format."""
    import math

    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids], device=device)
        labels = ids.clone()
        labels[0, :len(prompt_ids)] = -100  # score the answer only
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
