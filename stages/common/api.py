"""API candidates: a model behind an OpenAI-compatible `/chat/completions` endpoint, prompted like a local one.

The key is read from the environment variable the candidate names (never from params.yaml); select checks every
API candidate's variable before it sends a single record. Few-shot examples go as earlier user/assistant turns,
the project's system prompt as the system message; the user turn is the project's template filled with the
record (`endpoint.render: false` sends the bare prompt, for an endpoint that applies the template itself, such
as this project's own service). Greedy (temperature 0), the project's stop strings, `select.max_new_tokens`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from stages.common.errors import ProjectError


def missing_keys(candidates) -> list[str]:
    """A problem for each API candidate whose key variable is unset or empty."""
    return [
        f"`select.candidates.{c.name}.endpoint.api_key_env`: the environment variable {c.endpoint.api_key_env} "
        f"is not set; export the key for {c.endpoint.base_url} in it (nothing was sent)"
        for c in candidates
        if c.endpoint and not os.environ.get(c.endpoint.api_key_env)
    ]


@dataclass
class Answers:
    answers: list[str]
    seconds_per_answer: float
    prompt_tokens: int
    completion_tokens: int


def messages(params, record: dict, shots: list[dict], render: bool) -> list[dict]:
    def user(r: dict) -> str:
        return params.prompt.template.format(**r) if render else r["prompt"]

    out = [{"role": "system", "content": params.prompt.system}] if params.prompt.system else []
    for shot in shots:
        out += [{"role": "user", "content": user(shot)}, {"role": "assistant", "content": shot["completion"]}]
    return out + [{"role": "user", "content": user(record)}]


def ask(candidate, params, records: list[dict], shots: list[dict], progress: str) -> Answers:
    """Every record's answer from the endpoint, with the tokens it counted (its `usage`) and the mean latency."""
    import openai
    from tqdm import tqdm

    e = candidate.endpoint
    client = openai.OpenAI(base_url=e.base_url, api_key=os.environ[e.api_key_env], max_retries=2, timeout=120)
    answers, prompt_tokens, completion_tokens = [], 0, 0
    start = time.perf_counter()
    for record in tqdm(records, desc=progress, unit="answer", leave=False):
        try:
            reply = client.chat.completions.create(
                model=e.model,
                messages=messages(params, record, shots, e.render),
                temperature=0,
                max_tokens=params.select.max_new_tokens,
                stop=list(params.prompt.stop)[:4] or None,
            )
        except openai.APIConnectionError as exc:
            raise ProjectError(
                [
                    f"`select.candidates.{candidate.name}.endpoint.base_url`: {e.base_url} did not "
                    f"answer ({exc.__cause__ or exc}); is the server up and the URL right?"
                ]
            ) from None
        except openai.APIStatusError as exc:
            raise ProjectError(
                [
                    f"`select.candidates.{candidate.name}`: {e.base_url} refused the request with "
                    f"{exc.status_code}: {exc.message}"
                ]
            ) from None
        answers.append((reply.choices[0].message.content or "").strip())
        if reply.usage:
            prompt_tokens += reply.usage.prompt_tokens
            completion_tokens += reply.usage.completion_tokens
    seconds = (time.perf_counter() - start) / max(len(records), 1)
    return Answers(answers, seconds, prompt_tokens, completion_tokens)


def cost_per_1k_requests(entry, answers: Answers, n: int) -> float | None:
    """USD per 1000 requests like the measured ones, at the catalog's list price (None: no price known)."""
    if entry is None or entry.api is None or not n:
        return None
    usd = (
        answers.prompt_tokens * entry.api.price_per_1m_input_usd
        + answers.completion_tokens * entry.api.price_per_1m_output_usd
    ) / 1e6
    return round(usd / n * 1000, 4)
