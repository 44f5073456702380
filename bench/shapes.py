"""Model shapes the GPU benches build with random weights (no hub): the architecture is what they measure."""

from __future__ import annotations


def qwen25_05b(vocab_size: int = 151936):
    """Qwen2.5-0.5B's published shape (494M parameters with its own vocabulary)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
    )
