"""The champion as a GGUF file for llama.cpp and Ollama (`lifecycle deploy --target gguf`).

    lifecycle deploy --target gguf --out deploy/gguf --gguf-type Q8_0    # <name>-v<version>-Q8_0.gguf + Modelfile

The packaged model (its LoRA already merged by package) is written with the `gguf` package that llama.cpp
maintains (gguf-py): the Llama architecture's hyper-parameters, the byte-level BPE tokenizer with its merges and
special tokens, the chat template when the tokenizer has one, and every tensor under llama.cpp's name. The query and
key projections are permuted as llama.cpp's own converter permutes them (its rotary embedding pairs neighbouring
dimensions, transformers' pairs the two halves). gguf-py quantizes Q8_0, Q5_0 and Q4_0 itself; the k-quants
(Q4_K_M and the like) need llama.cpp's `llama-quantize`, run on the F16 file this writes. A 1-D tensor (the norms)
and a row too short for the block stay F32, as llama.cpp's converter leaves them.
"""

from __future__ import annotations

import json
from pathlib import Path

TYPES = ("F32", "F16", "Q8_0", "Q5_0", "Q4_0")  # what gguf-py writes itself
LLAMA_CPP_ONLY = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K")  # llama-quantize makes these from F16


class GgufRefused(Exception):
    """A model or a type this writer cannot produce; the message says why and what to do."""


def refuse_unsupported(config, gguf_type: str) -> None:
    if gguf_type in LLAMA_CPP_ONLY:
        raise GgufRefused(
            f"{gguf_type} is a llama.cpp k-quant that gguf-py cannot write: write F16 here (`--gguf-type F16`) and "
            f"run llama.cpp's `llama-quantize model-F16.gguf model-{gguf_type}.gguf {gguf_type}`"
        )
    if gguf_type not in TYPES:
        raise GgufRefused(f"--gguf-type {gguf_type}: one of {', '.join(TYPES)} (or a llama.cpp k-quant via F16)")
    if config.model_type != "llama":
        raise GgufRefused(
            f"the model is a {config.model_type!r}; this writer knows the Llama architecture (SmolLM2, the offline "
            "default's tiny models, Llama 2/3 shapes); use llama.cpp's convert_hf_to_gguf.py for other ones"
        )


def _permute(weights, heads: int):
    """llama.cpp's layout of a q or k projection: each head's rotary halves interleaved."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensor(data, gguf_type: str):
    """The array and its GGML type: F32 for 1-D tensors and rows the block does not divide, else `gguf_type`."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    kind = GGMLQuantizationType[gguf_type]
    block = GGML_QUANT_SIZES[kind][0]
    if data.ndim < 2 or gguf_type == "F32" or data.shape[-1] % block:
        return data.astype(np.float32), GGMLQuantizationType.F32
    if gguf_type == "F16":
        return data.astype(np.float16), kind
    return quants.quantize(data.astype(np.float32), kind), kind


def write(model_dir: Path, out: Path, gguf_type: str, name: str) -> dict:
    """`model_dir` (a transformers Llama folder) as `out`, a GGUF file at `gguf_type`. Written to a temporary file
    and moved, so a failure leaves nothing half-written. Returns what the file holds."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    refuse_unsupported(config, gguf_type)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 10000.0)

    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{gguf_type}" if gguf_type != "F32" else "ALL_F32"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    vocab = gguf.BpeVocab(model_dir)  # byte-level BPE (GPT-2 style), what SmolLM2 and the tiny models use
    tokens, _, types = (list(column) for column in zip(*vocab.all_tokens(), strict=True))
    tokens = [t.encode("utf-8") if isinstance(t, str) else t for t in tokens]
    types += [gguf.TokenType.UNUSED] * (config.vocab_size - len(tokens))
    tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), config.vocab_size)]  # an embedding row per id
    # Special tokens that sit in the main vocabulary (SmolLM2's <|im_start|>) must be CONTROL, or llama.cpp
    # tokenizes the chat template's markers as text.
    added = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
    for token in added:
        if token["id"] < len(types):
            types[token["id"]] = gguf.TokenType.CONTROL if token.get("special") else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the GPT-2 split, as transformers' ByteLevel pre-tokenizer does
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/pad ids, the chat template

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    if "lm_head.weight" in weights and config.tie_word_embeddings:
        del weights["lm_head.weight"]  # llama.cpp reuses token_embd for a tied head
    written = {}
    for hf_name, data in weights.items():
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise GgufRefused(f"{model_dir}: tensor {hf_name} has no llama.cpp name; the model is not a plain Llama")
        data = np.asarray(data, dtype=np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        array, kind = _tensor(data, gguf_type)
        plain = kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        writer.add_tensor(target, array, raw_dtype=None if plain else kind)  # quantized: bytes of blocks
        written[target] = kind.name
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(out), "type": gguf_type, "tensors": len(written), "bytes": out.stat().st_size}


def modelfile(gguf_file: Path, chat_template: bool, stops: list[str]) -> str:
    """An Ollama Modelfile beside the GGUF: Ollama reads the chat template from the file's metadata; greedy by default,
    as evaluate measured."""
    lines = [f"FROM ./{gguf_file.name}", "PARAMETER temperature 0"]
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops if s]
    if not chat_template:
        lines.append('TEMPLATE "{{ .Prompt }}"')  # a plain completion model: the prompt as the renderer made it
    return "\n".join(lines) + "\n"
