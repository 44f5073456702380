"""The generation engine for a model in the pipeline: the file it runs, written at a serving precision, and the
Generator over it (stages/common/generation.py, which the bento carries). Evaluate, the prompt search and select
open their engines here, with `serve.engine` and `serve.fast_math`, so the answers they record come from the engine
that will serve them.

    python -m stages.common.engines models/pretrain/tiny-m     # the engine this model gets here, its file, 4 answers
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from stages.common import generation
from stages.common.errors import ProjectError
from stages.common.tracking import sha256

log = logging.getLogger(__name__)


@dataclass
class Opened:
    """An engine ready to answer, and what it runs: recorded with every result it gives."""

    engine: object
    name: str  # openvino | transformers
    why: str
    precision: str  # full | int8 | int4 (params `package.quantize`)
    settings: dict  # what decides its tokens: the GGUF type and OpenVINO's properties, or torch's precision
    file: Path | None = None  # the GGUF file the openvino engine runs
    size_bytes: int = 0  # the weights as the engine holds them (the file's size; torch.save's for transformers)
    sha256: str = ""  # the file's digest: package checks that it ships the same bytes
    workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def record(self) -> dict:
        return {
            "engine": self.name,
            "why": self.why,
            "precision": self.precision,
            **self.settings,
            **({"sha256": self.sha256} if self.sha256 else {}),
        }

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None
        if self.workdir is not None:
            self.workdir.cleanup()


def engine_choice(params, model_type: str, device: str) -> tuple[str, str]:
    try:
        return generation.choose(params.serve.engine, model_type, device)
    except generation.EngineRefused as exc:
        raise ProjectError([str(exc)]) from None


def write_engine_file(model, tokenizer, out: Path, precision: str, name: str) -> dict:
    """`model` (a merged causal LM in memory) as the GGUF file the openvino engine runs at `precision`."""
    from stages.common import gguf_file

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return gguf_file.write(Path(folder), out, generation.GGUF_TYPE[precision], name)


def open_engine(params, model, tokenizer, device: str, precision: str = "full", concurrency: int | None = None):
    """The engine `serve.engine` picks for `model` at `precision`, opened. OpenVINO runs the GGUF file written here
    (in a temporary folder, gone on `close`); transformers the model itself (quantized by precision.py)."""
    name, why = engine_choice(params, model.config.model_type, device)
    concurrency = concurrency or max(params.evaluate.batch_size, params.serve.max_batch_size)
    if name == generation.TRANSFORMERS:
        from stages.common import precision as precisions

        model = precisions.quantize(model, precision)
        return Opened(
            generation.TransformersEngine(model, tokenizer),
            name,
            why,
            precision,
            {"torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch.")},
            size_bytes=precisions.weight_bytes(model),
        )
    from stages.common.gguf_file import GgufRefused

    workdir = tempfile.TemporaryDirectory(prefix="engine-")
    file = Path(workdir.name) / generation.GGUF_FILE
    try:
        written = write_engine_file(model, tokenizer, file, precision, params.project.name)
        penalty = generation.repetition_penalty(model.generation_config)
        engine = generation.OpenVINOEngine(file, concurrency, params.serve.fast_math, penalty)
    except (GgufRefused, RuntimeError) as exc:  # a Llama the writer or OpenVINO's GGUF reader does not take
        workdir.cleanup()
        if params.serve.engine != "auto":
            raise ProjectError(
                [f"serve.engine openvino cannot run this model: {exc}; set serve.engine: auto"]
            ) from None
        log.warning("engine: OpenVINO cannot run this model (%s); transformers answers instead", exc)
        fallback = params.model_copy(update={"serve": params.serve.model_copy(update={"engine": "transformers"})})
        opened = open_engine(fallback, model, tokenizer, device, precision, concurrency)
        opened.why = f"the fallback: OpenVINO could not open its file ({exc})"
        return opened
    settings = {"gguf_type": written["type"], "openvino": engine.properties or "fast_math (bf16, dynamic quantization)"}
    return Opened(engine, name, why, precision, settings, file, written["bytes"], sha256(file), workdir)


def generator(opened: Opened, model, renderer) -> generation.Generator:
    """The Generator the server builds too: the renderer's cut, its stops (a plain template's), the model's eos."""
    eos = generation.eos_ids(getattr(model, "generation_config", None), renderer.tokenizer)
    stops = [] if renderer.chat else renderer.fmt.stop
    return generation.Generator(opened.engine, renderer.tokenizer, renderer.cut, stops, eos)


def generate(
    model,
    renderer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: str | None = None,
    decoding: dict | None = None,
    opened=None,
):
    """Answers, cut by the renderer, through the one engine (stages/common/generation.py): `opened` (an engine from
    stages/common/engines.py), else transformers on `model`, `batch_size` rows at a time. Greedy unless `decoding`
    asks for sampling ({"sampling": True, "temperature", "top_p", "top_k", "seed"}: seeded, so a run repeats)."""
    if opened is None:
        opened = Opened(generation.TransformersEngine(model, renderer.tokenizer), "transformers", "", "full", {})
    how = generation.Decoding(max_new_tokens)
    if decoding and decoding.get("sampling"):
        how = generation.Decoding(
            max_new_tokens, decoding["temperature"], decoding["top_p"], decoding["top_k"], decoding["seed"]
        )
    ids = [renderer.encode(p) for p in prompts]
    return generation.answer_all(generator(opened, model, renderer), ids, how, batch_size, progress)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from stages.common.loader import load_params
    from stages.common.models import load_model, load_tokenizer
    from stages.common.prompting import PromptFormat, Renderer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder or hub id")
    parser.add_argument("--precision", default="full", choices=list(generation.GGUF_TYPE))
    args = parser.parse_args(argv)
    params = load_params()
    model, tok = load_model(args.model), load_tokenizer(args.model)
    opened = open_engine(params, model, tok, "cpu", args.precision, concurrency=4)
    print(opened.record())
    renderer = Renderer(PromptFormat(**params.prompt.model_dump(mode="json"), max_new_tokens=24), tok)
    prompts = [renderer.encode(renderer.prompt({"prompt": q})) for q in ("What does `json.dumps` do?",) * 4]
    print(generation.answer_all(generator(opened, model, renderer), prompts, generation.Decoding(24), 4).answers)
    opened.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def engine_version(engine: str) -> str:
    """The installed version of what runs `engine` (part of the answer cache's key: a new engine answers again)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openvino-genai" if engine == "openvino" else "transformers")
    except PackageNotFoundError:
        return "?"
