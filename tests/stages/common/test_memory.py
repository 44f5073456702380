"""The memory estimate against the peak memory measured on CPU for a tiny Llama (20.8M parameters)."""

import json

import pytest

from stages.common.memory import QLORA_BYTES, Shape, estimate, lora_parameters, shape_of

CONFIG = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=8000,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
BATCH, SEQ, R = 8, 128, 8


@pytest.fixture(scope="module")
def measured() -> dict:
    """The peak resident memory of each technique, in one fresh process (bench/memory.py says how it is measured)."""
    from bench.memory import measure

    return measure(json.dumps(CONFIG), BATCH, SEQ, R, ["inference", "lora", "full"])


@pytest.fixture(scope="module")
def shape():
    from transformers import LlamaConfig

    config = LlamaConfig(**CONFIG)
    h, i, v, layers = 512, 1376, 8000, 4
    parameters = layers * (4 * h * h + 3 * h * i + 2 * h) + 2 * v * h + h
    return shape_of(config, parameters)


# The estimate is a plan, not a promise: on CPU it lands within this factor of the measured peak for each
# technique (measured here: full 0.87, LoRA 0.99, inference 1.10 times the estimate).
TOLERANCE = 1.3


@pytest.mark.slow  # the measuring process trains a 20M-parameter model once: ~16 s
@pytest.mark.parametrize("technique", ["full", "lora", "inference"])
def test_the_estimate_holds_against_the_peak_measured_on_cpu(shape, measured, technique):
    m = measured[technique]
    assert m["parameters"] == shape.parameters, "the shape's parameter count is the model's"
    e = estimate(shape, technique, "fp32", BATCH, SEQ, lora_r=R)
    assert e.trainable == m["trainable"], "LoRA's trainable count from the shape is PEFT's exact count"
    ratio = m["peak"] / e.total
    assert 1 / TOLERANCE <= ratio <= TOLERANCE, (technique, ratio, e.gib(), m)


def test_parts_follow_the_technique_and_precision(shape):
    full32, full16 = estimate(shape, "full", "fp32"), estimate(shape, "full", "bf16")
    assert full32.weights == 2 * full16.weights and full32.optimizer == 2 * full32.gradients
    lora = estimate(shape, "lora", "bf16", lora_r=R)
    assert lora.trainable == lora_parameters(shape, R) and lora.gradients == 4 * lora.trainable  # fp32 adapters
    qlora = estimate(shape, "qlora", "bf16", lora_r=R)
    emb = shape.embedding_parameters
    assert emb == 2 * 8000 * 512, "untied: the input embeddings and the head"
    assert qlora.weights == (shape.parameters - emb) * QLORA_BYTES + emb * 2, "NF4 layers, 16-bit embeddings"
    assert estimate(shape, "inference").gradients == 0


def test_a_parameter_count_alone_gives_weights_and_states_and_says_activations_are_unknown():
    e = estimate(Shape(parameters=7_000_000_000), "lora", "bf16")
    assert e.activations is None and e.gib()["activations"] is None
    assert e.weights == 14e9 and e.trainable == 70_000_000  # 1 % of the weights when the layers are unknown


def test_quantized_serving_counts_the_linear_weights_at_their_bytes_and_the_embeddings_as_trained():
    from stages.common.memory import QUANTIZED_BYTES

    s = Shape(parameters=1000, hidden=8, layers=1, intermediate=16, vocab=50, kv_hidden=8, embedding_parameters=400)
    full = estimate(s, "inference", "bf16")
    for name, per_weight in QUANTIZED_BYTES.items():
        at = estimate(s, "inference", "bf16", quantized=name)
        assert at.weights == 600 * per_weight + 400 * 2, name
        assert at.activations == full.activations, "the KV cache and the working set stay at the compute precision"
    assert (
        estimate(s, "inference", "bf16", quantized="int4").total
        < estimate(s, "inference", "bf16", quantized="int8").total
    )
