"""One generation engine for every answer that is evaluated or served: evaluate, the prompt search, the precision
trials and the server all decode through `Generator`, so a served answer is an evaluated one by construction.

    python -m stages.common.generation models/package/model     # which engine a model folder gets here, and why

Two engines sit behind one step interface (`add` a request, `step` every live request by a token, `drop` one):
- `openvino`: OpenVINO GenAI's ContinuousBatchingPipeline on the GGUF file that ships (F16, Q8_0 or Q4_0 as
  written by stages/common/gguf.py). A request joins the running batch at the next step and leaves it when done,
  so a long retrieval prompt no longer holds a whole batch back. Deterministic by default (`DETERMINISTIC`): this
  CPU has AMX/bf16, and with OpenVINO's defaults it computes in bf16 and quantizes activations per batch, so a
  greedy answer depended on its batch (8 of 16 differed); in f32 with no dynamic quantization 16 of 16 equal the
  same request alone. `serve.fast_math: true` gives that up for speed.
- `transformers`: a causal LM in torch, decoded step by step with a KV cache (left-padded prefill; a row that is
  done leaves the batch with its cache). New requests wait until the running batch is empty: static batching,
  the fallback for architectures the GGUF writer does not know, and the engine of training-time checks.

Whatever the engine, the request's own logic lives here once (`Row`): end-of-sequence, the request's stop
sequences, `max_new_tokens`, the renderer's cut of the finished text. Token ids go in and come out (the model's own
Hugging Face tokenizer encodes and decodes for both engines), so the engines never disagree on a prompt's tokens.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

OPENVINO, TRANSFORMERS = "openvino", "transformers"
ENGINES = (OPENVINO, TRANSFORMERS)
# The OpenVINO properties that make greedy decoding batch-invariant on a CPU (recorded with every result).
DETERMINISTIC = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
# Serving precision -> the GGUF type the openvino engine runs it as. OpenVINO's GGUF reader refuses F32, so the
# trained weights run as F16 (23 of 24 greedy answers equal to float32 transformers on the SmolLM2 champion).
GGUF_TYPE = {"full": "F16", "int8": "Q8_0", "int4": "Q4_0"}
GGUF_FILE = "model.gguf"  # the file's name in a packaged model folder
KV_CACHE_GB = 1  # the pipeline's KV cache: ~20k tokens of SmolLM2-135M in f32, 16 rows of its 2k context and more


class EngineRefused(Exception):
    """An engine asked for that cannot run this model here; the message says why and what to do."""


def choose(requested: str, model_type: str, device: str = "cpu") -> tuple[str, str]:
    """(engine, why) for a model of `model_type` on `device`: `auto` takes OpenVINO where it runs and falls back to
    transformers with the reason; an engine asked for by name that cannot run is EngineRefused."""
    problem = openvino_problem(model_type, device)
    if requested == TRANSFORMERS:
        return TRANSFORMERS, "asked for (serve.engine: transformers)"
    if requested == OPENVINO:
        if problem:
            raise EngineRefused(f"serve.engine is openvino, but {problem}; set serve.engine: auto or transformers")
        return OPENVINO, "asked for (serve.engine: openvino)"
    if requested != "auto":
        raise EngineRefused(f"serve.engine {requested!r}: one of auto, {', '.join(ENGINES)}")
    if problem:
        return TRANSFORMERS, f"the fallback: {problem}"
    return OPENVINO, "auto: OpenVINO GenAI, continuous batching on the CPU"


def openvino_problem(model_type: str, device: str) -> str | None:
    """Why the openvino engine cannot run this model here; None when it can."""
    if not device.startswith("cpu"):
        return f"the model runs on {device}, and this project runs OpenVINO on the CPU only"
    if model_type != "llama":
        return f"the model is a {model_type!r} and the GGUF writer knows the Llama architecture only"
    if importlib.util.find_spec("openvino_genai") is None:
        return "openvino-genai is not installed (pip install openvino-genai)"
    return None


@dataclass(frozen=True)
class Decoding:
    """How one request decodes: greedy when temperature is 0; a seed makes sampling repeat."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False  # decode all max_new_tokens (speed measurements: every precision does the same work)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def sampling(self) -> tuple:
        """What rows must share to decode in one batch of the transformers engine (not their lengths)."""
        return (self.temperature, self.top_p, self.top_k, self.seed)


@dataclass
class Row:
    """One request as it decodes: its tokens so far, its text (the renderer's cut applied) and why it ended."""

    ids: list[int]
    decoding: Decoding
    stop: tuple[str, ...] = ()  # the request's own stop sequences (OpenAI's `stop`)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    reason: str = ""  # stop | length, once it is done
    abandoned: Callable[[], bool] = lambda: False  # its client is gone or its time is up

    @property
    def done(self) -> bool:
        return bool(self.reason)


def truncate_at(text: str, stops) -> tuple[str, bool]:
    """`text` up to the first of `stops`, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Generator:
    """Requests through an engine: each step decodes a token of every live row, and the rows that are done leave.

    `finish` is the renderer's cut of an answer (stripping, its stop sequences), `renderer_stops` the stops that
    end decoding early (a plain template's "\\n"); `eos` the token ids that end an answer."""

    def __init__(self, engine, tokenizer, finish: Callable[[str], str], renderer_stops=(), eos=()):
        self.engine, self.tokenizer, self.finish = engine, tokenizer, finish
        self.renderer_stops = tuple(s for s in renderer_stops if s)
        self.eos = set(eos) or {tokenizer.eos_token_id}
        self.live: dict[int, Row] = {}
        self.next_key = 0

    def add(self, row: Row) -> None:
        self.engine.add(self.next_key, row.ids, row.decoding)
        self.live[self.next_key] = row
        self.next_key += 1

    def step(self) -> list[Row]:
        """One token more for every live row; returns the rows that got text (done ones included)."""
        touched = []
        for key, new in self.engine.step().items():
            row = self.live[key]
            self.feed(row, new)
            if not row.done and self.engine.finished(key):
                row.reason = "stop" if len(row.tokens) < row.decoding.max_new_tokens else "length"
            touched.append(row)
        for key, row in list(self.live.items()):
            if not row.done and row.abandoned():
                row.reason = "length"
            if row.done:
                self.engine.drop(key)
                del self.live[key]
        return touched

    def feed(self, row: Row, new: list[int]) -> None:
        for token in new:
            if row.done:
                break
            if token in self.eos and not row.decoding.ignore_eos:
                row.reason = "stop"
            else:
                row.tokens.append(token)
        row.text, stopped = self.answer(row, self.tokenizer.decode(row.tokens, skip_special_tokens=True))
        if stopped:
            row.reason = "stop"
        elif not row.reason and len(row.tokens) >= row.decoding.max_new_tokens:
            row.reason = "length"

    def answer(self, row: Row, raw: str) -> tuple[str, bool]:
        """The answer in a raw continuation: cut at the request's stops, then the renderer's (which it applies
        after stripping, as the renderer does); and whether a stop ended it."""
        text, stopped = truncate_at(raw, row.stop)
        _, renderer_stopped = truncate_at(text.lstrip(), self.renderer_stops)
        return self.finish(text), stopped or renderer_stopped

    def run(self, rows: list[Row], concurrency: int, progress: str | None = None) -> list[Row]:
        """Every row answered, at most `concurrency` decoding at once (a new one joins as another leaves)."""
        from tqdm.auto import tqdm

        waiting = list(rows)
        with tqdm(total=len(rows), desc=progress, disable=progress is None, unit="answer") as bar:
            while waiting or self.live:
                while waiting and len(self.live) < concurrency:
                    self.add(waiting.pop(0))
                before = len(self.live)
                self.step()
                bar.update(before - len(self.live))
        return rows


@dataclass
class Answers:
    answers: list[str]
    seconds_per_answer: float
    tokens: int  # new tokens, all answers together


def answer_all(
    generator: Generator,
    prompts_ids: list[list[int]],
    decoding: Decoding,
    concurrency: int,
    progress: str | None = None,
) -> Answers:
    """The answers to `prompts_ids`, `concurrency` at a time: what evaluate, the prompt search and select record."""
    start = time.perf_counter()
    rows = generator.run([Row(ids, decoding) for ids in prompts_ids], concurrency, progress)
    elapsed = time.perf_counter() - start
    return Answers([r.text for r in rows], elapsed / max(len(rows), 1), sum(len(r.tokens) for r in rows))


# --- the engines -------------------------------------------------------------------------------------------------


def writable_copy(gguf_file) -> tempfile.TemporaryDirectory | None:
    """A temporary folder holding a copy of `gguf_file` when the file cannot be written (a read-only root, as the
    k8s manifests run the image): OpenVINO GenAI's GGUF reader opens it for writing too (O_RDWR, measured with
    strace on 2026.4) and refuses it otherwise. None when the file is writable."""
    import os
    import shutil

    if os.access(gguf_file, os.W_OK):
        return None
    folder = tempfile.TemporaryDirectory(prefix="gguf-")
    shutil.copy(gguf_file, Path(folder.name) / Path(gguf_file).name)
    return folder


class OpenVINOEngine:
    """OpenVINO GenAI's continuous batching over a GGUF file (F16, Q8_0, Q4_0)."""

    name = OPENVINO

    def __init__(self, gguf_file, max_num_seqs: int = 16, fast_math: bool = False, repetition_penalty: float = 1.0):
        import openvino_genai

        self.genai = openvino_genai
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.cache_size = KV_CACHE_GB
        scheduler.max_num_seqs = max_num_seqs
        self.properties = {} if fast_math else dict(DETERMINISTIC)
        self.copy = writable_copy(gguf_file)
        opened = str(Path(self.copy.name) / Path(gguf_file).name if self.copy else gguf_file)
        self.pipe = openvino_genai.ContinuousBatchingPipeline(opened, scheduler, "CPU", self.properties)
        self.repetition_penalty = repetition_penalty
        self.handles: dict[int, object] = {}

    def config(self, decoding: Decoding):
        c = self.genai.GenerationConfig()
        c.max_new_tokens = decoding.max_new_tokens
        c.apply_chat_template = False  # the renderer made the prompt
        c.repetition_penalty = self.repetition_penalty
        c.ignore_eos = decoding.ignore_eos
        if decoding.greedy:
            c.do_sample = False
        else:
            c.do_sample = True
            c.temperature = decoding.temperature
            c.top_p = decoding.top_p
            c.top_k = decoding.top_k or 0
            if decoding.seed is not None:
                c.rng_seed = decoding.seed
        return c

    def add(self, key: int, ids: list[int], decoding: Decoding) -> None:
        import numpy as np
        import openvino

        tensor = openvino.Tensor(np.asarray([ids], dtype=np.int64))
        self.handles[key] = self.pipe.add_request(key, tensor, self.config(decoding))

    def step(self) -> dict[int, list[int]]:
        if self.pipe.has_non_finished_requests():
            self.pipe.step()
        new = {}
        status = self.genai.GenerationStatus
        for key, handle in self.handles.items():
            if handle.can_read():
                new[key] = [t for out in handle.read().values() for t in out.generated_ids]
            elif handle.get_status() == status.FINISHED:
                new[key] = []  # finished with nothing more to read: the row sees its end (`finished`)
            elif handle.get_status() == status.IGNORED:  # the scheduler could not fit it (KV cache too small)
                raise RuntimeError(f"OpenVINO ignored request {key}: its prompt does not fit the KV cache")
        return new

    def finished(self, key: int) -> bool:
        """The engine ended the request itself (end-of-sequence, its max_new_tokens)."""
        return self.handles[key].get_status() == self.genai.GenerationStatus.FINISHED

    def drop(self, key: int) -> None:
        handle = self.handles.pop(key, None)
        if handle is not None and handle.get_status() != self.genai.GenerationStatus.FINISHED:
            handle.cancel()  # its KV cache blocks go back to the pool at the next step

    def close(self) -> None:
        """One more step for requests cancelled last (their blocks are freed by a step; else OpenVINO reports them
        leaked when the pipeline goes)."""
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()
        if self.pipe.has_non_finished_requests():
            self.pipe.step()


class TransformersEngine:
    """A torch causal LM decoded step by step: a left-padded prefill of the rows waiting, then a token per step for
    each live row with a KV cache; a row that is done leaves the batch with its cache. Positions follow the
    attention mask as `generate` sets them, so left padding changes no greedy answer; the model's own repetition
    penalty (generation_config.json) applies as in `generate`. Rows sampling alike share a batch; a seeded row
    decodes alone (its seed alone decides it)."""

    name = TRANSFORMERS

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.waiting: dict[int, tuple[list[int], Decoding]] = {}
        self.batch = None  # the running batch's tensors and rows

    def add(self, key: int, ids: list[int], decoding: Decoding) -> None:
        self.waiting[key] = (ids, decoding)

    def drop(self, key: int) -> None:
        self.waiting.pop(key, None)
        if self.batch and key in self.batch["keys"]:
            self.batch["dropped"].add(key)

    def step(self) -> dict[int, list[int]]:
        import torch

        if self.batch is None and self.waiting:
            return self._prefill()
        if self.batch is None:
            return {}
        b = self.batch
        keep = [i for i, k in enumerate(b["keys"]) if k not in b["dropped"]]
        if not keep:
            self.batch = None
            return self.step()
        if len(keep) < len(b["keys"]):  # rows that are done leave the batch, their cache with them
            index = torch.tensor(keep, device=b["ids"].device)
            b["cache"].batch_select_indices(index)
            for name in ("ids", "mask", "positions", "chosen"):
                b[name] = b[name][index]
            b["keys"] = [b["keys"][i] for i in keep]
        b["mask"] = torch.cat([b["mask"], b["mask"].new_ones((len(b["keys"]), 1))], dim=1)
        b["positions"] = b["positions"][:, -1:] + 1
        with torch.no_grad():
            logits = self.model(
                input_ids=b["chosen"][:, None],
                attention_mask=b["mask"],
                position_ids=b["positions"],
                past_key_values=b["cache"],
                use_cache=True,
            ).logits[:, -1, :]
        return self._choose(logits.float())

    def _prefill(self) -> dict[int, list[int]]:
        import torch
        from transformers import (
            DynamicCache,
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        first_key, (_, decoding) = next(iter(self.waiting.items()))
        if decoding.seed is not None:
            keys = [first_key]
        else:  # rows that decode alike, in the order they came
            keys = [k for k, (_, d) in self.waiting.items() if d.sampling == decoding.sampling]
        rows = [self.waiting.pop(k)[0] for k in keys]
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        warpers, generator = LogitsProcessorList(), None
        penalty = getattr(self.model.generation_config, "repetition_penalty", None)
        if penalty and penalty != 1.0:  # first, as `generate` orders them
            warpers.append(RepetitionPenaltyLogitsProcessor(penalty))
        if not decoding.greedy:  # the same warpers, in the same order, as `generate` applies
            warpers.append(TemperatureLogitsWarper(decoding.temperature))
            if decoding.top_k:
                warpers.append(TopKLogitsWarper(decoding.top_k))
            if decoding.top_p < 1:
                warpers.append(TopPLogitsWarper(decoding.top_p))
            if decoding.seed is not None:
                generator = torch.Generator(device).manual_seed(decoding.seed)
        cache = DynamicCache(config=self.model.config)
        self.batch = {
            "keys": keys,
            "ids": ids,
            "mask": mask,
            "positions": positions,
            "cache": cache,
            "warpers": warpers,
            "generator": generator,
            "greedy": decoding.greedy,
            "dropped": set(),
        }
        with torch.no_grad():
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
        return self._choose(logits.float())

    def _choose(self, logits) -> dict[int, list[int]]:
        import torch

        b = self.batch
        scores = b["warpers"](b["ids"], logits) if b["warpers"] else logits
        if b["greedy"]:
            chosen = scores.argmax(-1)
        else:
            chosen = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=b["generator"]).squeeze(1)
        b["ids"] = torch.cat([b["ids"], chosen[:, None]], dim=1)  # what a repetition penalty looks back on
        b["chosen"] = chosen
        return {k: [t] for k, t in zip(b["keys"], chosen.tolist())}

    def finished(self, key: int) -> bool:
        return False  # a row here ends only when the Generator says so

    def close(self) -> None:
        self.waiting.clear()
        self.batch = None


def eos_ids(generation_config, tokenizer) -> list[int]:
    """The token ids that end an answer: the model's generation config's, else its tokenizer's."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else (list(eos) if isinstance(eos, (list, tuple)) else [eos])


def repetition_penalty(generation_config) -> float:
    """The model's own repetition penalty (generation_config.json), which both engines apply as `generate` does."""
    return getattr(generation_config, "repetition_penalty", None) or 1.0


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder (config.json)")
    parser.add_argument("--engine", default="auto", choices=["auto", *ENGINES])
    args = parser.parse_args(argv)
    config = json.loads((Path(args.model) / "config.json").read_text(encoding="utf-8"))
    try:
        engine, why = choose(args.engine, config.get("model_type", "?"))
    except EngineRefused as exc:
        print(exc)
        return 2
    print(f"{engine}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
