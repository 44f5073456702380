"""The one prompt renderer: a record (prompt, completion, named fields) to the exact text the model sees.

Selection, prompt search, SFT, alignment, evaluation and the server all call this module, and `package` copies
it into the bento beside the model with its settings (`prompt.json`), so what is served is what was evaluated.
It imports nothing from the project (only the tokenizer it is given), for that reason.

With `chat_template: auto`, a tokenizer that has a chat template (an instruct model) gets the rendered messages:
the system message, few-shot examples as earlier user/assistant turns, the conversation's history, the user
turn; a base model gets the plain template, examples first. Retrieved passages (a record's `context`) come
before the user turn, one `context_template` each. A prompt that would not fit the model's context with
`max_new_tokens` loses few-shot examples (the last first), then retrieved passages (the least relevant first),
and is then refused with PromptTooLong naming the numbers, never an index error inside the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SETTINGS_FILE = "prompt.json"  # the renderer's settings inside a packaged model folder


class PromptTooLong(ValueError):
    def __init__(self, tokens: int, max_new_tokens: int, context: int, where: str = ""):
        self.tokens, self.max_new_tokens, self.context = tokens, max_new_tokens, context
        super().__init__(
            f"{where + ': ' if where else ''}the prompt is {tokens} tokens even without few-shot "
            f"examples or retrieved passages; with max_new_tokens {max_new_tokens} that is {tokens + max_new_tokens}, over the "
            f"model's context of {context} tokens: shorten the input (data.max_length), lower "
            "max_new_tokens, or choose a model with a longer context"
        )


@dataclass
class PromptFormat:
    """`params.yaml` `prompt:` plus what adapt chose (the few-shot examples) and the model's limits.

    Every field of `params.Prompt`, defaults included, because this is what travels: the bento carries prompt.json,
    not the params models (tests/stages/common/test_prompting.py fails on a field missing here or a default that
    differs)."""

    template: str = "{prompt}"
    system: str | None = None
    chat_template: str = "auto"  # auto | always | never
    completion_prefix: str = " "
    stop: list[str] = field(default_factory=lambda: ["\n"])
    examples: list[dict] = field(default_factory=list)
    max_new_tokens: int = 40
    context_template: str = "Context: {text}\n"  # one retrieved chunk, put before the user turn

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PromptFormat:
        return cls(**d)


def context_length(model_or_config) -> int | None:
    """The model's maximum sequence length, from its config (names differ by architecture)."""
    config = getattr(model_or_config, "config", model_or_config)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Renderer:
    def __init__(self, fmt: PromptFormat, tokenizer, context: int | None = None):
        self.fmt, self.tokenizer = fmt, tokenizer
        self.context = context or _tokenizer_limit(tokenizer)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if fmt.chat_template == "always" and not has_template:
            raise ValueError(
                "`prompt.chat_template` is always but this model's tokenizer has no chat template; use auto or never"
            )
        self.chat = fmt.chat_template == "always" or (fmt.chat_template == "auto" and has_template)

    @classmethod
    def load(cls, folder: str | Path, tokenizer, context: int | None = None) -> Renderer:
        """The renderer a packaged model folder carries (prompt.json)."""
        settings = json.loads((Path(folder) / SETTINGS_FILE).read_text(encoding="utf-8"))
        return cls(PromptFormat.from_dict(settings["format"]), tokenizer, context or settings.get("context"))

    def save(self, folder: str | Path) -> None:
        (Path(folder) / SETTINGS_FILE).write_text(
            json.dumps({"format": self.fmt.to_dict(), "context": self.context, "chat": self.chat}, indent=2) + "\n",
            encoding="utf-8",
        )

    # --- text --------------------------------------------------------------------------------------------------

    def user_turn(self, record: dict) -> str:
        """The template filled with the record; a record carrying retrieved `context` (chunk texts, best first)
        gets each chunk through `context_template` before it."""
        passages = "".join(
            self.fmt.context_template.format(text=" ".join(c.split())) for c in record.get("context") or []
        )
        return passages + self.fmt.template.format_map(record)

    def _plain(self, record: dict, examples: list[dict]) -> str:
        parts = [self.fmt.system + "\n\n"] if self.fmt.system else []
        for shot in examples:
            parts.append(self.user_turn(shot) + self.fmt.completion_prefix + _answer(shot) + "\n\n")
        turns = record.get("history") or []
        for user, assistant in zip(turns[::2], turns[1::2]):
            parts.append(
                self.user_turn({**record, "prompt": user["content"], "context": None})
                + self.fmt.completion_prefix
                + assistant["content"]
                + "\n\n"
            )
        parts.append(self.user_turn(record))
        return "".join(parts)

    def messages(self, record: dict, examples: list[dict]) -> list[dict]:
        system = record.get("system") or self.fmt.system
        messages = [{"role": "system", "content": system}] if system else []
        for shot in examples:
            messages += [
                {"role": "user", "content": self.user_turn(shot)},
                {"role": "assistant", "content": _answer(shot)},
            ]
        messages += record.get("history") or []
        return messages + [{"role": "user", "content": self.user_turn(record)}]

    def render(self, record: dict, examples: list[dict]) -> str:
        if not self.chat:
            return self._plain(record, examples)
        return self.tokenizer.apply_chat_template(
            self.messages(record, examples), tokenize=False, add_generation_prompt=True
        )

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        # A chat-templated text already holds its special tokens (BOS included): adding them again would double them.
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def prompt(
        self, record: dict, examples: list[dict] | None = None, max_new_tokens: int | None = None, where: str = ""
    ) -> str:
        """The model input for `record`: few-shot examples (the format's, unless given), then retrieved chunks
        (the least relevant first), dropped until prompt + max_new_tokens fits the model's context; PromptTooLong
        when even without them it does not."""
        shots = list(self.fmt.examples if examples is None else examples)
        passages = list(record.get("context") or [])
        budget = max_new_tokens if max_new_tokens is not None else self.fmt.max_new_tokens
        while True:
            text = self.render({**record, "context": passages}, shots)
            if self.context is None:
                return text
            tokens = self.count(text)
            if tokens + budget <= self.context:
                return text
            if shots:
                shots.pop()
            elif passages:
                passages.pop()
            else:
                raise PromptTooLong(tokens, budget, self.context, where)

    def completion(self, record: dict, answer: str | None = None) -> str:
        """The text a trainer appends to `prompt(record)` for `answer` (the record's completion by default)."""
        answer = _answer(record) if answer is None else answer
        if not self.chat:
            return self.fmt.completion_prefix + answer
        # The chat template's own formatting of the assistant turn (its end-of-turn token included).
        messages = self.messages(record, [])
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
        return full[len(prompt) :].rstrip() if full.startswith(prompt) else answer

    def cut(self, generated: str) -> str:
        """The answer in a generated continuation: up to the first stop sequence (plain template), trimmed."""
        text = generated.strip()
        if not self.chat:
            for stop in filter(None, self.fmt.stop):
                text = text.split(stop)[0]
        return text.strip()


def _answer(record: dict) -> str:
    if "completion" in record:
        return record["completion"]
    return record["references"][0]


def _tokenizer_limit(tokenizer) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10_000_000 else None  # 1e30 means "not set"
