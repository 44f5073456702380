"""The generation engine behind the service: a bounded queue and batches of concurrent requests.

Every request becomes a Job on one asyncio queue. A worker task takes what is waiting (up to `max_batch_size`,
waiting `batch_wait_ms` for company when the queue is short), groups jobs that decode alike (greedy together;
sampling with the same settings together; a seeded job alone, so that its seed alone decides it) and decodes
each group on a single model thread, so the event loop keeps answering health checks and refusing past the
bound: a left-padded prefill, then a token per step for each row still answering, with a KV cache. A row that
is done (end-of-sequence, its own `max_new_tokens`, a stop sequence, its client gone) leaves the batch at once.
A full queue refuses at once (QueueFull, the service's 429); a job not answered within its timeout is dropped,
or stopped if it is generating (Timeout, the service's 504). A streamed job's text goes out as it is decoded.

In float32 a batched greedy answer equals the same request answered alone (tests/serving/test_engine.py; 0 of
64 differed on an H200 too). In bfloat16 on a GPU it need not: 40 of 64 answers of a random-weight 0.5B model
differed there, because bf16 rounding depends on the batch's shape (bench/serve_gpu.py).

It imports nothing from the project and nothing from BentoML: the service gives it the model, the tokenizer,
how to finish an answer (the renderer's cut) and what to count; the tests drive it in-process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: int):
        self.waiting, self.retry_after = waiting, retry_after
        super().__init__(f"the server is busy: {waiting} requests are waiting; retry after {retry_after} s")


class Timeout(Exception):
    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"the request was not answered within {seconds:g} s")


@dataclass(frozen=True)
class Sampling:
    """How a job decodes. Greedy when temperature is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Job:
    ids: list[int]  # the rendered prompt's tokens
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()  # the request's own stop sequences (OpenAI's `stop`)
    stream: asyncio.Queue | None = None  # text deltas are put here as they are generated
    future: asyncio.Future | None = None
    sent: str = ""  # what was streamed so far

    @property
    def batch_key(self):
        """Jobs with the same key may share a batch; a seeded job never shares one (the batch's draws would)."""
        return id(self) if self.sampling.seed is not None else self.sampling


@dataclass
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    batch_size: int


@dataclass
class Counters:
    """What the engine reports to the service's metrics (each a callable, so the engine needs no Prometheus)."""

    batch: Callable[[int], None] = lambda size: None
    tokens: Callable[[int], None] = lambda n: None
    waiting: Callable[[int], None] = lambda n: None


def truncate_at(text: str, stops) -> tuple[str, bool]:
    """`text` up to the first of `stops`, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Engine:
    def __init__(
        self,
        model,
        tokenizer,
        finish: Callable[[str], str],
        renderer_stops: list[str] | tuple = (),
        max_batch_size: int = 16,
        batch_wait_ms: float = 5,
        max_queue: int = 64,
        counters: Counters | None = None,
    ):
        self.model, self.tokenizer, self.finish = model, tokenizer, finish
        self.renderer_stops = tuple(s for s in renderer_stops if s)
        self.max_batch_size, self.batch_wait, self.max_queue = max_batch_size, batch_wait_ms / 1000, max_queue
        self.counters = counters or Counters()
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="generate")  # one batch at a time
        self.worker: asyncio.Task | None = None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = (
            model.generation_config.eos_token_id
            if model.generation_config.eos_token_id is not None
            else tokenizer.eos_token_id
        )
        self.eos = set(eos if isinstance(eos, list) else [eos])

    # --- the asyncio side ---------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self.queue.qsize()

    def retry_after(self) -> int:
        """Seconds a refused client should wait: a rough drain time of the queue, at least one."""
        return max(1, round(self.waiting / max(self.max_batch_size, 1)))

    def enqueue(self, job: Job, timeout: float):
        """Queue `job` (QueueFull at once when the queue is full); await what this returns for its Result."""
        loop = asyncio.get_running_loop()
        if self.worker is not None and self.worker.get_loop() is not loop:  # a new event loop (tests): start over
            self.queue, self.worker = asyncio.Queue(), None
        if self.waiting >= self.max_queue:
            raise QueueFull(self.waiting, self.retry_after())
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._work())
        job.future = loop.create_future()
        self.queue.put_nowait(job)
        self.counters.waiting(self.waiting)
        return self._wait(job, timeout)

    async def _wait(self, job: Job, timeout: float) -> Result:
        try:
            # wait_for cancels the future on timeout: a queued job is then skipped, a running one stopped.
            return await asyncio.wait_for(job.future, timeout)
        except asyncio.TimeoutError:
            raise Timeout(timeout) from None

    async def _take(self) -> list[Job]:
        """What is waiting, up to max_batch_size; waits batch_wait for company while the batch is not full."""
        jobs = [await self.queue.get()]
        deadline = time.monotonic() + self.batch_wait
        while len(jobs) < self.max_batch_size:
            if self.queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            else:
                jobs.append(self.queue.get_nowait())
        self.counters.waiting(self.waiting)
        return [j for j in jobs if not j.future.done()]  # timed out while waiting

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            groups: dict = {}
            for job in await self._take():
                groups.setdefault(job.batch_key, []).append(job)
            for group in groups.values():
                try:
                    results = await loop.run_in_executor(self.model_thread, self._generate, group, loop)
                except Exception as exc:  # the model failed: every job of the batch gets the error
                    results = [exc] * len(group)
                for job, result in zip(group, results):
                    if job.future.done():
                        continue
                    if isinstance(result, Exception):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)

    # --- the model thread ---------------------------------------------------------------------------------------

    def answer(self, job: Job, raw: str) -> tuple[str, bool]:
        """The answer in a raw continuation: cut at the request's stops, then the renderer's (which it applies
        after stripping, as evaluate does); and whether a stop ended it."""
        text, stopped = truncate_at(raw, job.stop)
        head = text.lstrip()
        _, renderer_stopped = truncate_at(head, self.renderer_stops)
        return self.finish(text), stopped or renderer_stopped

    def _generate(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> list[Result]:
        """One batch, decoded step by step with a KV cache. A row that is done (end-of-sequence, its own
        max_new_tokens, a stop sequence, abandoned) leaves the batch at once, cache included, so the rows still
        answering do not pay for it: the answers of a batch differ in length, and `model.generate` would run every
        row to the longest. Positions follow the attention mask as `generate` sets them, so left padding changes
        no greedy answer; the model's own repetition penalty (generation_config.json) applies as in `generate`,
        its other generation defaults do not."""
        import torch
        from transformers import (
            DynamicCache,
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        width = max(len(j.ids) for j in jobs)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(j.ids)) + j.ids for j in jobs], device=device)
        mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs], device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        sampling, warpers, generator = jobs[0].sampling, LogitsProcessorList(), None
        penalty = getattr(model.generation_config, "repetition_penalty", None)
        if penalty and penalty != 1.0:  # first, as `generate` orders them
            warpers.append(RepetitionPenaltyLogitsProcessor(penalty))
        if not sampling.greedy:  # the same warpers, in the same order, as `generate` applies
            warpers.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                warpers.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1:
                warpers.append(TopPLogitsWarper(sampling.top_p))
            if sampling.seed is not None:
                generator = torch.Generator(device).manual_seed(sampling.seed)
        self.counters.batch(len(jobs))
        new: list[list[int]] = [[] for _ in jobs]
        texts, reasons = [""] * len(jobs), [""] * len(jobs)
        live = list(range(len(jobs)))
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            logits = (
                model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                .logits[:, -1, :]
                .float()
            )
            while True:
                scores = warpers(ids, logits) if warpers else logits
                if sampling.greedy:
                    chosen = scores.argmax(-1)
                else:
                    chosen = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
                ids = torch.cat([ids, chosen[:, None]], dim=1)  # what a repetition penalty looks back on
                keep = []
                for k, (row, token) in enumerate(zip(live, chosen.tolist())):
                    job = jobs[row]
                    if token in self.eos:
                        reasons[row] = "stop"
                    else:
                        new[row].append(token)
                    texts[row], stopped = self.answer(job, tok.decode(new[row], skip_special_tokens=True))
                    if stopped:
                        reasons[row] = "stop"
                    elif not reasons[row] and (len(new[row]) >= job.max_new_tokens or job.future.done()):
                        reasons[row] = "length"
                    if job.stream is not None and not job.future.done():
                        self._stream(job, texts[row], bool(reasons[row]), loop)
                    if not reasons[row]:
                        keep.append(k)
                if not keep:
                    break
                if len(keep) < len(live):  # rows that are done leave the batch, their cache with them
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    ids, mask, positions, chosen = ids[index], mask[index], positions[index], chosen[index]
                    live = [live[k] for k in keep]
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
                positions = positions[:, -1:] + 1
                logits = (
                    model(
                        input_ids=chosen[:, None],
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=cache,
                        use_cache=True,
                    )
                    .logits[:, -1, :]
                    .float()
                )
        results = []
        for i, job in enumerate(jobs):
            self.counters.tokens(len(new[i]))
            results.append(Result(texts[i], len(job.ids), len(new[i]), reasons[i], len(jobs)))
        return results

    def _stream(self, job: Job, text: str, finished: bool, loop) -> None:
        """Send the part of `text` that can no longer change: not a trailing space (the final answer is
        stripped), not the last characters a stop sequence may still claim, not a half-decoded character."""
        if not finished:
            hold = max((len(s) for s in job.stop + self.renderer_stops), default=1) - 1
            text = text[: len(text) - hold] if hold else text
            text = text.rstrip().removesuffix("\ufffd")
        if len(text) > len(job.sent) and text.startswith(job.sent):
            delta, job.sent = text[len(job.sent) :], text
            loop.call_soon_threadsafe(job.stream.put_nowait, delta)
