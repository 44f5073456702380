"""Serving precisions: the weights as trained (`full`) and the smaller ones evaluate tries beside them
(`package.quantize`). One function turns a loaded model into a precision, in evaluate and in the server (the bento
carries this file), so the quantized answers that are served are the ones that were evaluated.

| precision  | library (maintained path)                 | runs on   | linear weights become                      |
|------------|-------------------------------------------|-----------|--------------------------------------------|
| int8       | torchao `Int8WeightOnlyConfig`            | CPU, CUDA | int8, one scale per output row             |
| int4       | optimum-quanto `qint4`                    | CPU, CUDA | 4-bit, packed two per byte, groups of 128  |
| bnb_int8   | bitsandbytes LLM.int8 (transformers)      | CUDA      | int8 with fp16 outlier columns             |
| nf4        | bitsandbytes NF4 (transformers)           | CUDA      | 4-bit NormalFloat, groups of 64            |

Why two libraries on a CPU (measured 2026-12-01, torch 2.13, torchao 0.18, optimum-quanto 0.2.7; bench/quantize.py):
torchao's int8 weight-only decodes faster than quanto's int8 here, and torchao 0.18 has no CPU kernel for int4
(its int4 layouts are CUDA-only), while quanto's qint4 runs on a CPU. The embeddings and the LM head stay as they
are: small models tie the head to the embeddings, and the head is the layer most sensitive to rounding (llama.cpp
keeps it at 6 or 8 bits too).
"""

from __future__ import annotations

import io

FULL = "full"  # the weights as trained (float32 on a CPU, bfloat16 on a GPU)
QUANTIZED = ("int8", "int4", "bnb_int8", "nf4")
GPU_ONLY = ("bnb_int8", "nf4")
LIBRARY = {"int8": "torchao", "int4": "optimum-quanto", "bnb_int8": "bitsandbytes", "nf4": "bitsandbytes"}
KEEP = ("lm_head",)  # modules left unquantized


def unavailable(precision: str, device: str) -> str | None:
    """Why `precision` cannot run on `device` here (its library missing, or a CUDA-only method on a CPU); None when
    it can."""
    import importlib.util

    if precision == FULL:
        return None
    if precision in GPU_ONLY and not device.startswith("cuda"):
        return f"{precision} needs a CUDA GPU (bitsandbytes); this run is on {device}"
    module = {"torchao": "torchao", "optimum-quanto": "optimum.quanto", "bitsandbytes": "bitsandbytes"}
    library = LIBRARY[precision]
    try:
        found = importlib.util.find_spec(module[library]) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"{precision} needs {library}: pip install {library}"


def quantize(model, precision: str):
    """`model` at `precision` (modified in place where the library allows, and returned). Deterministic: the same
    weights give the same quantized weights."""
    if precision == FULL:
        return model
    if precision == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(), filter_fn=_quantizable)
        return model
    if precision == "int4":
        from optimum.quanto import freeze, qint4
        from optimum.quanto import quantize as quanto_quantize

        quanto_quantize(model, weights=qint4, exclude=list(KEEP))
        freeze(model)  # the float weights are dropped: only the packed 4-bit ones stay in memory
        return model
    if precision in GPU_ONLY:
        return _bitsandbytes(model, precision)
    raise ValueError(f"unknown precision {precision!r}: one of {FULL}, {', '.join(QUANTIZED)}")


def _quantizable(module, name: str) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in KEEP


def _bitsandbytes(model, precision: str):
    """bitsandbytes quantizes while transformers loads the weights: the model goes through a folder once."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = (
        BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(KEEP))
        if precision == "bnb_int8"
        else BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=list(KEEP),
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(tmp, quantization_config=config, device_map="cuda")


def weight_bytes(model) -> int:
    """The model's weights as torch.save writes them at this precision (shared tensors once): what the weights of a
    quantized model take on disk and, near enough, in memory."""
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()
