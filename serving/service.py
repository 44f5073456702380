"""The BentoML service for the packaged model: one typed `generate` endpoint with bounded inputs.

    lifecycle serve                             # the bento the package stage built, on 127.0.0.1:3000
    curl -s localhost:3000/generate -H 'content-type: application/json' \
         -d '{"prompt": "What does `json.dumps` do?"}'

It loads only the model the package stage put in BentoML's model store: its tag travels inside the bento in
packaged_model.json, written next to this file at build time (LIFECYCLE_MODEL_TAG overrides it); never
params.yaml, never a hub. The prompt renderer travels too: its code (prompting.py, copied beside this file) and
its settings (prompt.json in the model folder), so what is served is exactly what was evaluated. When the shipped
variant answers with retrieval (a `_rag` variant), the model folder holds its index (`index/`) and the retriever's
code travels too (retrieval.py): each request retrieves, the chunks go into the prompt, and the answer lists the
`sources` it was given.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import bentoml
from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import BaseModel, Field

MODEL_TAG_ENV = "LIFECYCLE_MODEL_TAG"
PACKAGED_MODEL = Path(__file__).with_name("packaged_model.json")
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 256


def packaged_model_tag() -> str:
    tag = os.environ.get(MODEL_TAG_ENV)
    if not tag and PACKAGED_MODEL.is_file():
        tag = json.loads(PACKAGED_MODEL.read_text(encoding="utf-8"))["tag"]
    if not tag:
        raise RuntimeError(f"no packaged model: {PACKAGED_MODEL.name} is missing and {MODEL_TAG_ENV} is not set; "
                           "serve the bento that `lifecycle run` built (`lifecycle serve`)")
    return tag


with bentoml.importing():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # in a bento: the renderer and retriever the model was evaluated with, copied beside this file
        import prompting
        import retrieval
    except ImportError:  # run from the repository
        from stages.common import prompting, retrieval


class Source(BaseModel):
    source: str = Field(description="the knowledge document")
    section: str = Field(description="its section the passage comes from")
    text: str = Field(description="the passage put into the prompt")


class Answer(BaseModel):
    answer: str
    model: str
    latency_ms: float
    sources: list[Source] = Field(default=[], description="the retrieved passages the answer was given (RAG)")


@bentoml.service(name="lifecycle", traffic={"timeout": 60, "max_concurrency": 16}, resources={"cpu": "1"})
class Lifecycle:
    model_ref = bentoml.models.BentoModel(packaged_model_tag())

    def __init__(self) -> None:
        path = Path(self.model_ref.path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(path).to(self.device).eval()
        self.renderer = prompting.Renderer.load(path, self.tokenizer)
        # The shipped index (a _rag variant): searched on a working copy, the model store's stays as packaged.
        self.retriever = retrieval.Retriever.open(path / "index") if (path / "index" / retrieval.CARD).is_file() else None

    @bentoml.on_shutdown
    def remove_index_copy(self) -> None:
        if self.retriever and self.retriever.working_copy:
            self.retriever.working_copy.cleanup()

    @bentoml.api
    def generate(
        self,
        prompt: Annotated[str, MinLen(1), MaxLen(MAX_PROMPT_CHARS)] = "What does `json.dumps` do?",
        fields: Annotated[dict[str, str], Field(description="other fields the prompt template names")] = {},  # noqa: B006
        max_new_tokens: Annotated[int, Ge(1), Le(MAX_NEW_TOKENS)] = 40,
    ) -> Answer:
        start = time.perf_counter()
        found = self.retriever.search([prompt])[0] if self.retriever else []
        try:
            text = self.renderer.prompt({**fields, "prompt": prompt, "context": [c["text"] for c in found]},
                                        max_new_tokens=max_new_tokens)
        except KeyError as exc:
            raise bentoml.exceptions.InvalidArgument(f"the prompt template needs the field {exc} in `fields`") from None
        except prompting.PromptTooLong as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from None
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.renderer.chat).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        generated = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        # Only the passages that fit into the prompt were used (the renderer drops the least relevant first).
        used = [c for c in found if " ".join(c["text"].split()) in text]
        return Answer(answer=self.renderer.cut(generated), model=str(self.model_ref.tag),
                      latency_ms=round((time.perf_counter() - start) * 1000, 2),
                      sources=[Source(source=c.get("source", ""), section=c.get("section", ""), text=c["text"])
                               for c in used])
