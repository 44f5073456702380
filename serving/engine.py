"""The service's side of generation: a bounded queue in front of the one generation engine, continuous batching.

Every request becomes a Job on a bounded queue. A model thread runs the engine's steps (generation.py, the module
evaluate answered through): between two steps it admits what is waiting, up to `max_batch_size` rows decoding at
once, so a request joins the running batch at the next token and leaves it when it is done (end-of-sequence, its
`max_new_tokens`, a stop sequence, its client gone); with OpenVINO nobody waits for the slowest row of a batch.
When the engine is idle, a lone request waits `batch_wait_ms` for company, which waits in the queue meanwhile. A full queue refuses at once (QueueFull,
the service's 429); a job not answered within its timeout is dropped, or stopped if it is generating (Timeout, the
service's 504). A streamed job's text goes out as it is decoded.

A seeded sampling request decodes alone (the transformers engine keeps it in its own batch; OpenVINO gives each
request its own random generator). Greedy answers do not depend on their company: OpenVINO in its deterministic
settings and transformers in float32 give the same tokens batched and alone (tests/serving/test_engine.py).

It imports nothing from BentoML: the service gives it the Generator (engine, tokenizer, the renderer's cut) and
what to count; the tests drive it in-process.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def _generation():
    """The generation module (stages/common/generation.py; in a bento, beside this file). Imported when a job runs,
    so that importing this module needs nothing else (a server without its model says so first)."""
    if __package__:
        from stages.common import generation
    else:
        import generation
    return generation


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


@dataclass
class Job:
    ids: list[int]  # the rendered prompt's tokens
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()  # the request's own stop sequences (OpenAI's `stop`)
    stream: asyncio.Queue | None = None  # text deltas are put here as they are generated
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    deadline: float = float("inf")  # time.monotonic() past which it is not answered (Timeout)
    sent: str = ""  # what was streamed so far
    row: object = field(default=None, repr=False)  # its generation.Row while it decodes
    company: int = 1  # the most rows it decoded beside (itself included)

    def abandoned(self) -> bool:
        """Its client is gone (the future cancelled) or its time is up: the engine stops decoding it."""
        return self.future.done() or time.monotonic() > self.deadline

    def decoding(self):
        s = self.sampling
        return _generation().Decoding(self.max_new_tokens, s.temperature, s.top_p, s.top_k, s.seed)


@dataclass
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    batch_size: int
    done_at: float = 0.0  # time.monotonic() when it was answered


@dataclass
class Counters:
    """What the engine reports to the service's metrics (each a callable, so the engine needs no Prometheus)."""

    batch: Callable[[int], None] = lambda size: None
    tokens: Callable[[int], None] = lambda n: None
    waiting: Callable[[int], None] = lambda n: None


class Engine:
    def __init__(
        self,
        generator,  # a generation.Generator
        max_batch_size: int = 16,
        batch_wait_ms: float = 5,
        max_queue: int = 64,
        counters: Counters | None = None,
    ):
        self.generator = generator
        self.max_batch_size, self.batch_wait, self.max_queue = max_batch_size, batch_wait_ms / 1000, max_queue
        self.counters = counters or Counters()
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.jobs: dict[int, Job] = {}  # id(row) -> its job, while it decodes
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.arrived = threading.Condition()  # a job was put in the inbox

    # --- the asyncio side ---------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self.inbox.qsize()

    def retry_after(self) -> int:
        """Seconds a refused client should wait: a rough drain time of the queue, at least one."""
        return max(1, round(self.waiting / max(self.max_batch_size, 1)))

    def enqueue(self, job: Job, timeout: float):
        """Queue `job` (QueueFull at once when the queue is full); await what this returns for its Result."""
        if self.waiting >= self.max_queue:
            raise QueueFull(self.waiting, self.retry_after())
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._work, name="generate", daemon=True)
                self.thread.start()
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        # From now, not from when the caller awaits: the model thread may be answering already.
        job.deadline = time.monotonic() + timeout
        with self.arrived:
            self.inbox.put(job)
            self.arrived.notify()
        self.counters.waiting(self.waiting)
        return self._wait(job, timeout)

    async def _wait(self, job: Job, timeout: float) -> Result:
        try:
            # wait_for cancels the future on timeout: a queued job is then skipped, a running one stopped.
            result = await asyncio.wait_for(job.future, max(0.0, job.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise Timeout(timeout) from None
        if result.done_at > job.deadline:  # stopped at its deadline by the model thread, or answered too late
            raise Timeout(timeout)
        return result

    # --- the model thread ---------------------------------------------------------------------------------------

    def _admit(self, block: bool) -> int:
        """Jobs from the inbox into the engine, up to max_batch_size decoding. `block` (the engine is idle): wait
        for a job, then up to batch_wait for company, the company waiting in the inbox (so it counts against
        max_queue). Returns how many joined."""
        if block:
            with self.arrived:
                while self.inbox.empty():
                    self.arrived.wait()
                deadline = time.monotonic() + self.batch_wait
                while self.inbox.qsize() < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self.arrived.wait(left)
        joined = 0
        while len(self.generator.live) < self.max_batch_size:
            try:
                job = self.inbox.get_nowait()
            except queue.Empty:
                break
            if job.future.done():  # timed out (or its client left) while waiting
                continue
            job.row = _generation().Row(job.ids, job.decoding(), job.stop, abandoned=job.abandoned)
            self.generator.add(job.row)
            self.jobs[id(job.row)] = job
            joined += 1
        self.counters.waiting(self.waiting)
        return joined

    def _work(self) -> None:
        while True:
            joined = self._admit(block=not self.generator.live)
            live = len(self.generator.live)
            if joined:  # the rows decoding together once these joined
                self.counters.batch(live)
            try:
                touched = self.generator.step()
            except Exception as exc:  # the engine failed: every job it held gets the error, the engine starts over
                self._fail_all(exc)
                continue
            for row in touched:
                job = self.jobs[id(row)]
                job.company = max(job.company, live)
                if job.stream is not None and not job.future.done():
                    self._stream(job, row.text, row.done)
            for key in [k for k, job in self.jobs.items() if job.row.done]:  # answered, or abandoned and stopped
                job = self.jobs.pop(key)
                self.counters.tokens(len(job.row.tokens))
                r = job.row
                job.loop.call_soon_threadsafe(
                    _resolve,
                    job.future,
                    Result(r.text, len(r.ids), len(r.tokens), r.reason, job.company, time.monotonic()),
                )

    def _fail_all(self, exc: Exception) -> None:
        for key in list(self.generator.live):
            self.generator.engine.drop(key)
        self.generator.live.clear()
        for job in self.jobs.values():
            job.loop.call_soon_threadsafe(_fail, job.future, exc)
        self.jobs.clear()

    def _stream(self, job: Job, text: str, finished: bool) -> None:
        """Send the part of `text` that can no longer change: not a trailing space (the final answer is
        stripped), not the last characters a stop sequence may still claim, not a half-decoded character."""
        if not finished:
            hold = max((len(s) for s in job.stop + self.generator.renderer_stops), default=1) - 1
            text = text[: len(text) - hold] if hold else text
            text = text.rstrip().removesuffix("\ufffd")
        if len(text) > len(job.sent) and text.startswith(job.sent):
            delta, job.sent = text[len(job.sent) :], text
            job.loop.call_soon_threadsafe(job.stream.put_nowait, delta)


def _resolve(future: asyncio.Future, result: Result) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
