from pathlib import Path

from stages.common.io import read_json
from stages.common.params import AlignMethod


def test_dpo_moves_the_sft_model(prepared, aligned):
    import torch

    from stages.align import sft_model
    from stages.common.models import load_model

    sft, _ = sft_model(prepared.paths, "fp32")
    dpo = load_model(prepared.paths.aligned)
    sft_state, dpo_state = sft.state_dict(), dpo.state_dict()
    assert sft_state.keys() == dpo_state.keys(), "aligned is a plain merged model of the same architecture"
    changed = [k for k in sft_state if not torch.equal(sft_state[k], dpo_state[k])]
    assert changed, "DPO changed the weights"
    assert all("embed" not in k for k in changed), "LoRA targets linear layers only"
    metrics = read_json(Path(prepared.paths.metrics) / "align.json")
    assert metrics["trained"] and metrics["last_reward_accuracy"] is not None


def test_method_none_writes_no_model(prepared, adapted, tmp_path):
    from stages import align

    params = prepared.model_copy(update={"align": prepared.align.model_copy(update={"method": AlignMethod.none})})
    paths = prepared.paths.model_copy(update={"aligned": str(tmp_path / "aligned"), "metrics": str(tmp_path)})
    align.run(params, paths)
    assert read_json(tmp_path / "aligned" / "lifecycle.json") == {"method": "none", "model": False}
    assert not (tmp_path / "aligned" / "model.safetensors").exists()
