from pathlib import Path

from stages.common.io import read_json


def test_candidates_load_like_hub_models_and_learned(prepared):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("tiny", "tinier"):
        folder = Path(prepared.paths.pretrain) / name
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.config.hidden_size == {"tiny": 32, "tinier": 16}[name]
        assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    metrics = read_json(Path(prepared.paths.metrics) / "pretrain.json")
    assert metrics["tiny"]["final_loss"] < metrics["tiny"]["first_loss"] - 0.5
    assert metrics["tiny"]["parameters"] > metrics["tinier"]["parameters"]
