"""The `gguf` target: the champion as a GGUF file and an Ollama Modelfile, for llama.cpp, Ollama and their kin.

lifecycle deploy --target gguf --out deploy/gguf --gguf-type Q8_0
ollama create help-desk -f deploy/gguf/Modelfile     # or: llama-server -m deploy/gguf/<name>-v<version>-Q8_0.gguf
"""

from __future__ import annotations

import json
from pathlib import Path

from flows.deploy.common import Deployed, DeployRefused, Options

OUT = "deploy/gguf"  # where the file goes without --out


def bento_model_dir(bento: str) -> Path:
    """The folder of the model a bento serves, in BentoML's model store."""
    import bentoml

    info = bentoml.get(bento).info
    return Path(bentoml.models.get(info.models[0].tag).path)


def write(bento: str, version, out: Path, gguf_type: str) -> dict:
    """The champion as <name>-v<version>-<type>.gguf and an Ollama Modelfile in `out`. A bento of the openvino
    engine carries its GGUF file: at the same type it is copied as it is (the bytes that were evaluated and
    served), at another type it is written again from that file dequantized. A bento of the transformers engine
    carries the trained weights (a torchao/quanto precision is applied at start-up): written from them at
    `gguf_type`, llama.cpp's own quantization."""
    import shutil

    from stages.common import gguf_file as writer

    model_dir = bento_model_dir(bento)
    out.mkdir(parents=True, exist_ok=True)
    name = bento.split(":")[0]
    target = out / f"{name}-v{version.version}-{gguf_type}.gguf"
    shipped = json.loads((model_dir / "lifecycle.json").read_text(encoding="utf-8"))
    try:
        if shipped.get("file") and shipped.get("gguf_type") == gguf_type:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(model_dir / shipped["file"], tmp)
            tmp.replace(target)
            written = {"file": str(target), "type": gguf_type, "bytes": target.stat().st_size, "as_served": True}
        elif shipped.get("file"):
            written = _rewritten(model_dir, shipped, target, gguf_type, f"{name} v{version.version}")
        else:
            written = writer.write(model_dir, target, gguf_type, f"{name} v{version.version}")
    except writer.GgufRefused as exc:
        raise DeployRefused(str(exc)) from None
    prompt = json.loads((model_dir / "prompt.json").read_text(encoding="utf-8"))
    (out / "Modelfile").write_text(
        writer.modelfile(target, prompt.get("chat", False), prompt["format"].get("stop") or []), encoding="utf-8"
    )
    return {**written, "chat": bool(prompt.get("chat")), "modelfile": str(out / "Modelfile")}


def _rewritten(model_dir: Path, shipped: dict, target: Path, gguf_type: str, name: str) -> dict:
    """The bento's GGUF file dequantized (weights.convert), then written at `gguf_type`; the tokenizer is the
    bento's own. From an F16 file that is the trained weights to 16 bits; from a quantized one, rounding twice."""
    import shutil
    import tempfile

    from stages.common import gguf_file as writer
    from stages.common.weights import convert

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        convert(model_dir / shipped["file"], folder)
        for f in model_dir.glob("*.json"):
            if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "generation_config.json":
                shutil.copy(f, folder / f.name)
        written = writer.write(folder, target, gguf_type, name)
    return {**written, "from": f"the bento's {shipped['gguf_type']} file"}


def deploy(params, bento: str, version, options: Options) -> Deployed:
    return Deployed(write(bento, version, Path(options.out or OUT), options.gguf_type))
