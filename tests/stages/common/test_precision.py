"""Serving precisions: real quantized weights (torchao int8, quanto int4) on a tiny Llama, and honest skips."""

import pytest

from stages.common import precision


def _model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_int8_and_int4_quantize_the_linear_layers_and_still_generate(untrained_lm):
    import torch
    from optimum.quanto import QTensor
    from torchao.quantization import Int8Tensor

    full = _model(untrained_lm)
    ids = torch.tensor([[5, 17, 42, 8]])
    for name, kind in (("int8", Int8Tensor), ("int4", QTensor)):
        model = precision.quantize(_model(untrained_lm), name)
        layer = model.model.layers[0]
        assert isinstance(layer.mlp.up_proj.weight, kind) and isinstance(layer.self_attn.q_proj.weight, kind)
        assert not isinstance(model.lm_head.weight, kind), "the head (tied to the embeddings) stays as trained"
        assert precision.weight_bytes(model) < precision.weight_bytes(full), name
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert out.shape == (1, 10)
    assert precision.quantize(full, "full") is full


def test_quantizing_twice_gives_the_same_weights_so_serving_repeats_evaluate(untrained_lm):
    import torch

    for name in ("int8", "int4"):
        a = precision.quantize(_model(untrained_lm), name).model.layers[0].mlp.down_proj.weight
        b = precision.quantize(_model(untrained_lm), name).model.layers[0].mlp.down_proj.weight
        assert torch.equal(a.dequantize(), b.dequantize()), name


def test_a_gpu_method_on_a_cpu_is_skipped_with_its_reason():
    assert precision.unavailable("nf4", "cpu") == "nf4 needs a CUDA GPU (bitsandbytes); this run is on cpu"
    assert precision.unavailable("bnb_int8", "cpu").startswith("bnb_int8 needs a CUDA GPU")
    assert precision.unavailable("int8", "cpu") is None and precision.unavailable("full", "cpu") is None
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        precision.quantize(object(), "int3")
