"""The one renderer: train, eval and serve produce the same string; prompts fit the model or fail clearly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from stages.common.io import read_json, read_jsonl
from stages.common.prompting import PromptFormat, PromptTooLong, Renderer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(untrained_lm):
    """A small BPE tokenizer: rendering and counting need one, not a trained model."""
    from stages.common.models import load_tokenizer

    return load_tokenizer(untrained_lm)


def test_train_eval_and_serve_render_the_same_string(prepared, packaged):
    """The bento's own copy of the renderer, with the settings packaged beside the model, against what SFT trained
    on and what evaluate scored, for the same eval record."""
    import bentoml

    from stages import adapt
    from stages.common.models import load_model, load_tokenizer, render_all, renderer_for
    from stages.common.variants import variants

    record = read_jsonl(Path(prepared.paths.processed) / "eval.jsonl")[0]
    report = read_json(prepared.paths.eval_metrics)
    spec = variants(
        prepared.paths,
        read_json(prepared.paths.selection),
        read_json(prepared.paths.prompt),
        [m.value for m in prepared.align.methods],
    )[report["candidate"]]
    tok = load_tokenizer(spec["adapter"] or spec["ref"])
    model = load_model(spec["ref"], adapter=spec["adapter"])
    evaluated = render_all(
        renderer_for(params=prepared, tokenizer=tok, model_or_config=model), [record], "eval", spec["examples"]
    )[0]
    trained = adapt.sft_rows(renderer_for(prepared, tok, model), [{**record, "completion": record["references"][0]}])[0]

    bento = bentoml.get(packaged["package"]["bento"])
    module_spec = importlib.util.spec_from_file_location("bento_prompting", Path(bento.path) / "src" / "prompting.py")
    bento_prompting = importlib.util.module_from_spec(module_spec)
    sys.modules["bento_prompting"] = bento_prompting  # dataclasses look their module up there
    module_spec.loader.exec_module(bento_prompting)
    model_dir = bentoml.models.get(packaged["package"]["bentoml_model"]).path
    served = bento_prompting.Renderer.load(model_dir, load_tokenizer(model_dir))

    assert served.prompt(record) == evaluated == trained["prompt"]
    assert evaluated == f"Question: {record['prompt']}\nAnswer:"
    assert served.completion(record) == trained["completion"] == " " + record["references"][0]


def test_named_fields_system_message_and_few_shot(tokenizer):
    fmt = PromptFormat(
        template="Subject: {subject}\n{prompt}\nTeam:",
        system="Route the ticket.",
        examples=[{"subject": "Invoice", "prompt": "Charged twice", "completion": "billing"}],
    )
    text = Renderer(fmt, tokenizer, 512).prompt({"subject": "Crash", "prompt": "App closes"})
    assert text == (
        "Route the ticket.\n\nSubject: Invoice\nCharged twice\nTeam: billing\n\nSubject: Crash\nApp closes\nTeam:"
    )
    with pytest.raises(KeyError):
        Renderer(fmt, tokenizer, 512).prompt({"prompt": "no subject"})


def test_chat_template_auto_always_never(tokenizer):
    record = {"prompt": "What does `len` do?", "completion": "Return the number of items."}
    tokenizer.chat_template = CHATML
    try:
        chat = Renderer(PromptFormat(system="Be brief.", chat_template="auto"), tokenizer, 512)
        assert chat.chat
        assert chat.prompt(record) == (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat does `len` do?"
            "<|im_end|>\n<|im_start|>assistant\n"
        )
        assert chat.completion(record) == "Return the number of items.<|im_end|>"
        assert (
            chat.cut("Return it.\nMore lines stay: a chat model stops at its end of turn.")
            == "Return it.\nMore lines stay: a chat model stops at its end of turn."
        )
        assert not Renderer(PromptFormat(chat_template="never"), tokenizer, 512).chat
    finally:
        tokenizer.chat_template = None
    assert not Renderer(PromptFormat(chat_template="auto"), tokenizer, 512).chat
    with pytest.raises(ValueError, match="no chat template"):
        Renderer(PromptFormat(chat_template="always"), tokenizer, 512)


def test_examples_are_dropped_before_the_prompt_is_refused(tokenizer):
    shots = [
        {"prompt": f"What does `mod.function_{i}` do exactly?", "completion": "It does a long thing " * 3}
        for i in range(6)
    ]
    record = {"prompt": "What does `x` do?"}
    fmt = PromptFormat(template="Q: {prompt}\nA:", examples=shots)
    unbounded = Renderer(fmt, tokenizer, context=None)
    zero, full = unbounded.count(unbounded.prompt(record, [])), unbounded.count(unbounded.prompt(record))
    context = (zero + full) // 2 + 20
    renderer = Renderer(fmt, tokenizer, context=context)
    text = renderer.prompt(record, max_new_tokens=20)
    kept = text.count("Q: ") - 1
    assert 0 < kept < len(shots), "some examples dropped, some kept"
    assert renderer.count(text) + 20 <= context
    with pytest.raises(
        PromptTooLong,
        match=rf"the prompt is {zero} tokens .* max_new_tokens 20 .* context of "
        rf"{zero + 10} tokens",
    ):
        Renderer(fmt, tokenizer, context=zero + 10).prompt(record, max_new_tokens=20)


def test_retrieved_passages_come_first_and_go_before_the_prompt_is_refused(tokenizer):
    passages = [
        "heapq.heappush: Push item onto heap,\n  maintaining the heap invariant.",
        "heapq.heappop: Pop the smallest item off the heap.",
    ]
    record = {"prompt": "What does `heapq.heappush` do?", "context": passages}
    fmt = PromptFormat(
        template="Question: {prompt}\nAnswer:",
        context_template="Context: {text}\n",
        examples=[{"prompt": "What does `len` do?", "completion": "Return the number of items."}],
    )
    unbounded = Renderer(fmt, tokenizer, context=None)
    assert unbounded.prompt(record, examples=[]) == (
        "Context: heapq.heappush: Push item onto heap, maintaining the heap invariant.\n"  # whitespace collapsed
        "Context: heapq.heappop: Pop the smallest item off the heap.\n"
        "Question: What does `heapq.heappush` do?\nAnswer:"
    )
    history = {
        "prompt": "And heappop?",
        "context": passages[1:],
        "history": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    assert unbounded.prompt(history, examples=[]).count("Context:") == 1, "earlier turns carry no passages"

    full = unbounded.count(unbounded.prompt(record))
    one_passage = unbounded.count(unbounded.prompt({**record, "context": passages[:1]}, examples=[]))
    text = Renderer(fmt, tokenizer, context=one_passage + 5).prompt(record, max_new_tokens=5)
    assert "Question: What does `len`" not in text, "the few-shot example goes first"
    assert "heappush: Push" in text and "heappop" not in text, "then the least relevant passage"
    assert full > one_passage
    bare = unbounded.count(unbounded.prompt({**record, "context": []}, examples=[]))
    with pytest.raises(PromptTooLong, match="without few-shot examples or retrieved passages"):
        Renderer(fmt, tokenizer, context=bare + 4).prompt(record, max_new_tokens=5)


def test_gpt2_with_a_short_context_never_indexes_out_of_range(processed, tokenizer, tmp_path):
    """A GPT-2-architecture candidate with 160 positions answers 3-shot prompts: shots are dropped to fit, where
    before its position embedding raised IndexError."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from stages.common.engines import generate
    from stages.common.models import render_all, renderer_for

    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=160,
            n_embd=32,
            n_layer=1,
            n_head=2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    dev = read_jsonl(Path(processed.paths.processed) / "dev.jsonl")
    shots = read_jsonl(Path(processed.paths.processed) / "sft.jsonl")[:3]
    renderer = renderer_for(processed, tokenizer, model, max_new_tokens=24)
    prompts = render_all(renderer, dev, "dev", shots, max_new_tokens=24)
    assert max(renderer.count(p) for p in prompts) + 24 <= 160
    assert min(p.count("Question:") for p in prompts) < 4, "some shots were dropped to fit"
    assert len(generate(model, renderer, prompts, 24, batch_size=4).answers) == len(dev)


def test_the_prompt_format_carries_every_field_of_params_prompt_with_its_default():
    """The bento carries PromptFormat (prompt.json), never the params models: a `prompt:` field missing here, or a
    default that differs, would be validated in params.yaml and then not rendered the same at serve time."""
    from dataclasses import fields

    from stages.common.params import Prompt

    carried = {f.name for f in fields(PromptFormat)}
    assert not set(Prompt.model_fields) - carried, (
        f"params.Prompt fields PromptFormat lacks: {set(Prompt.model_fields) - carried}"
    )
    defaults = PromptFormat()
    for name, value in Prompt().model_dump(mode="json").items():
        assert getattr(defaults, name) == value, (
            f"PromptFormat.{name} defaults to {getattr(defaults, name)!r}, params {value!r}"
        )
