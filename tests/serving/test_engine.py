"""The service's queue and the generation engines in-process, on the packaged tiny model's architecture: batching
changes no greedy answer (transformers and OpenVINO), the queue is bounded, a late request is dropped, stops and
streams agree with whole answers, and what the server answers is what evaluate's generate answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving import engine
from stages.common import generation
from stages.common.io import read_jsonl


@pytest.fixture(scope="module")
def loaded(packaged, prepared):
    """The packaged model's tokenizer and renderer, and its architecture with random weights (seeded, spread
    wide): the trained tiny model answers nearly everything with spaces, random weights say something different
    to every prompt, which is what a batching test needs to see."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from stages.common.prompting import Renderer

    folder = Path(prepared.paths.package) / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    config.initializer_range = 0.5
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    renderer = Renderer.load(folder, tokenizer)
    rows = read_jsonl(Path(prepared.paths.processed) / "eval.jsonl")
    ids = [renderer.encode(renderer.prompt({**r, "context": None})) for r in rows]
    return model, tokenizer, renderer, ids


def make(loaded, raw: bool = False, backend=None, **kw) -> tuple[engine.Engine, list[int]]:
    """The queue as the service builds it, over transformers unless `backend` is given; `raw`: without the
    renderer's stop at the end of a line, so that answers run on (random weights start new lines early)."""
    model, tokenizer, renderer, _ = loaded
    sizes: list[int] = []
    eng = engine.Engine(
        generation.Generator(
            backend or generation.TransformersEngine(model, tokenizer),
            tokenizer,
            str.strip if raw else renderer.cut,
            [] if raw or renderer.chat else renderer.fmt.stop,
            generation.eos_ids(model.generation_config, tokenizer),
        ),
        counters=engine.Counters(batch=sizes.append),
        **kw,
    )
    return eng, sizes


def answer_all(eng: engine.Engine, jobs: list[engine.Job], timeout: float = 120):
    async def go():
        return await asyncio.gather(*[eng.enqueue(j, timeout) for j in jobs], return_exceptions=True)

    return asyncio.run(go())


def test_a_batched_greedy_answer_equals_the_same_request_alone(loaded):
    _, _, _, ids = loaded
    lengths = [3 + k % 9 for k in range(len(ids))]  # rows leave their batch at different steps
    batched, sizes = make(loaded, raw=True, max_batch_size=8, batch_wait_ms=50)
    together = answer_all(batched, [engine.Job(i, n) for i, n in zip(ids, lengths)])
    assert max(sizes) > 1, "concurrent requests were generated together"
    alone, alone_sizes = make(loaded, raw=True, max_batch_size=1)
    one_by_one = [answer_all(alone, [engine.Job(i, n)])[0] for i, n in zip(ids, lengths)]
    assert len({r.text for r in one_by_one}) > len(ids) // 2, "the prompts get different answers"
    assert set(alone_sizes) == {1}
    assert [r.text for r in together] == [r.text for r in one_by_one]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in one_by_one]
    assert all(r.finish_reason in ("stop", "length") and r.prompt_tokens > 0 for r in together)
    assert any(r.batch_size > 1 for r in together)


def test_rows_of_one_batch_stop_at_their_own_max_new_tokens(loaded):
    _, _, _, ids = loaded
    eng, sizes = make(loaded, raw=True, max_batch_size=4, batch_wait_ms=50)
    short, long = answer_all(eng, [engine.Job(ids[0], 1), engine.Job(ids[0], 30)])
    assert max(sizes) == 2 and long.batch_size == 2
    assert short.completion_tokens <= 1 and short.finish_reason in ("length", "stop")
    assert long.text.startswith(short.text)


def test_a_full_queue_refuses_at_once_and_the_engine_goes_on(loaded):
    """One row decodes at a time and the first runs long: of the next ones, those past the 2 waiting are refused at
    once (the model thread admits the first job whenever it gets to it, so the refusal comes at the 3rd or 4th)."""
    _, _, _, ids = loaded
    eng, _ = make(loaded, raw=True, max_queue=2, max_batch_size=1)

    async def go():
        accepted, refused = [eng.enqueue(engine.Job(ids[0], 200), 60)], []
        for _ in range(3):
            try:
                accepted.append(eng.enqueue(engine.Job(ids[0], 4), 60))
            except engine.QueueFull as exc:
                refused.append(exc)
        assert refused and all(r.retry_after >= 1 and "busy" in str(r) for r in refused)
        return await asyncio.gather(*accepted)

    answered = asyncio.run(go())
    assert 2 <= len(answered) <= 3 and all(r.finish_reason in ("stop", "length") for r in answered)


def test_a_request_past_its_timeout_is_dropped_and_the_next_is_answered(loaded, backend):
    _, _, _, ids = loaded
    eng, _ = make(loaded, backend=backend)

    async def go():
        with pytest.raises(engine.Timeout):
            await eng.enqueue(engine.Job(ids[0], 200), 0.0001)
        return await eng.enqueue(engine.Job(ids[0], 4), 60)

    assert asyncio.run(go()).completion_tokens >= 1


@pytest.fixture(scope="module")
def openvino(loaded, tmp_path_factory):
    """The same random-weight model as the GGUF file the openvino engine runs (F16, as evaluate writes it)."""
    from stages.common.engines import write_engine_file

    model, tokenizer, _, _ = loaded
    file = tmp_path_factory.mktemp("openvino") / generation.GGUF_FILE
    write_engine_file(model, tokenizer, file, "full", "test")
    return file


@pytest.fixture(params=["transformers", "openvino"])
def backend(request, loaded, openvino):
    """Each engine in turn, for the tests that hold both to the same behaviour."""
    model, tokenizer, _, _ = loaded
    if request.param == "openvino":
        return generation.OpenVINOEngine(openvino, 16)
    return generation.TransformersEngine(model, tokenizer)


def talkative(eng: engine.Engine, ids: list[list[int]]) -> tuple[list[int], engine.Result]:
    """A prompt answered with a few characters at least, and its answer."""
    for prompt, result in zip(ids, answer_all(eng, [engine.Job(i, 20) for i in ids])):
        if len(result.text) >= 4:
            return prompt, result
    pytest.fail("every eval question was answered with less than 4 characters")


def test_a_stop_sequence_ends_the_answer_where_it_appears(loaded, backend):
    _, _, _, ids = loaded
    eng, _ = make(loaded, raw=True, backend=backend)
    prompt, whole = talkative(eng, ids)
    stop = whole.text[2:4]
    cut = answer_all(eng, [engine.Job(prompt, 20, stop=(stop,))])[0]
    assert cut.text == whole.text[: whole.text.index(stop)].strip() and cut.finish_reason == "stop"


def test_streamed_deltas_add_up_to_the_whole_answer(loaded, backend):
    _, _, _, ids = loaded
    eng, sizes = make(loaded, raw=True, backend=backend)
    prompt, whole = talkative(eng, ids)

    async def go():
        job = engine.Job(prompt, 20, stream=asyncio.Queue())
        result = await eng.enqueue(job, 60)
        deltas = []
        while not job.stream.empty():
            deltas.append(job.stream.get_nowait())
        return result, deltas

    result, deltas = asyncio.run(go())
    assert result.text == whole.text
    assert len(deltas) >= 2 and whole.text.startswith("".join(deltas)), "sent as generated, each part final"


def test_seeded_sampling_repeats_and_runs_alone(loaded):
    _, _, _, ids = loaded
    eng, sizes = make(loaded, max_batch_size=8, batch_wait_ms=50)
    hot = engine.Sampling(temperature=1.5, top_p=0.95, top_k=50, seed=7)
    a, b = answer_all(eng, [engine.Job(ids[3], 16, hot), engine.Job(ids[3], 16, hot)])
    assert a.text == b.text, "a seeded request decodes alone, so its seed decides it"


def test_engine_answers_equal_what_evaluate_generates(loaded):
    """The server's queue against `generate` as evaluate calls it (batches of 16 through the same engine, cut by
    the renderer), without and with a repetition penalty in the model's generation config."""
    from stages.common.engines import generate

    model, _, renderer, ids = loaded
    prompts = [renderer.tokenizer.decode(i) for i in ids]
    answers = {}
    try:
        for penalty in (None, 1.5):
            model.generation_config.repetition_penalty = penalty
            expected = generate(model, renderer, prompts, 12, batch_size=16).answers
            eng, _ = make(loaded, max_batch_size=16, batch_wait_ms=50)
            served = answer_all(eng, [engine.Job(i, 12) for i in ids])
            assert [r.text for r in served] == expected, penalty
            answers[penalty] = expected
    finally:
        model.generation_config.repetition_penalty = None
    assert len(set(answers[None])) > 1 and answers[None] != answers[1.5], "the penalty changed answers"


def test_openvino_greedy_answers_batched_equal_the_same_requests_alone(loaded, openvino):
    """16 greedy requests sent together equal each sent alone (the deterministic settings), and the server's queue
    answers what evaluate's generate answers through the same engine."""
    from stages.common.engines import Opened, generate

    model, _, renderer, ids = loaded
    ids = ids[:16]
    batched, sizes = make(loaded, raw=True, backend=generation.OpenVINOEngine(openvino, 16), batch_wait_ms=100)
    together = answer_all(batched, [engine.Job(i, 10 + k % 7) for k, i in enumerate(ids)])
    assert max(sizes) > 1, "the requests decoded together"
    alone, _ = make(loaded, raw=True, backend=generation.OpenVINOEngine(openvino, 1), max_batch_size=1)
    one_by_one = [answer_all(alone, [engine.Job(i, 10 + k % 7)])[0] for k, i in enumerate(ids)]
    assert len({r.text for r in one_by_one}) > len(ids) // 2, "the prompts get different answers"
    assert [r.text for r in together] == [r.text for r in one_by_one]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in one_by_one]

    ov = Opened(generation.OpenVINOEngine(openvino, 8), "openvino", "test", "full", {})
    prompts = [renderer.tokenizer.decode(i) for i in ids]
    expected = generate(model, renderer, prompts, 12, batch_size=8, opened=ov).answers
    served, _ = make(loaded, backend=generation.OpenVINOEngine(openvino, 8), max_batch_size=8, batch_wait_ms=50)
    assert [r.text for r in answer_all(served, [engine.Job(i, 12) for i in ids])] == expected
