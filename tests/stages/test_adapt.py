import hashlib
from pathlib import Path

from stages.common.io import read_json


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lora_changes_adapter_not_base(prepared, selected, adapted):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_ref = read_json(prepared.paths.selection)["selected"]["ref"]
    base = AutoModelForCausalLM.from_pretrained(base_ref)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_ref), prepared.paths.sft)
    lora_b = {n: p for n, p in tuned.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values()), "LoRA B starts at zero: training moved it"
    base_state = base.state_dict()
    for name, param in tuned.base_model.model.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(param, base_state[key]), f"base weight {key} changed"
    metrics = read_json(Path(prepared.paths.metrics) / "adapt.json")
    assert metrics["trained"] and 0 < metrics["trainable_percent"] < 100


def test_resume_from_checkpoint_after_a_kill(prepared, selected, tmp_path):
    """A run killed after its first checkpoint resumes from it instead of starting over."""
    from stages import adapt

    paths = prepared.paths.model_copy(update={"sft": str(tmp_path / "sft"), "metrics": str(tmp_path / "metrics")})
    selection = read_json(prepared.paths.selection)
    ckpt = adapt.checkpoint_dir(prepared, paths, selection)
    # Simulate the kill: train to the first checkpoint (save_steps=4) of a run configured for 8 steps.
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    import trl

    original = trl.SFTTrainer.__init__

    def with_kill(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(Kill())

    trl.SFTTrainer.__init__ = with_kill
    try:
        try:
            adapt.run(prepared, paths)
        except KeyboardInterrupt:
            pass
    finally:
        trl.SFTTrainer.__init__ = original
    assert (ckpt / "checkpoint-4").is_dir() and not Path(paths.sft).exists(), "killed: no half-written adapter"
    adapt.run(prepared, paths)
    metrics = read_json(Path(paths.metrics) / "adapt.json")
    assert metrics["resumed"] is True
    assert (Path(paths.sft) / "adapter_model.safetensors").is_file()
    assert not ckpt.exists(), "checkpoints are removed once the adapter is saved"


def test_qlora_without_a_gpu_is_a_clear_error(prepared, selected, tmp_path):
    import pytest

    from stages import adapt
    from stages.common.errors import ProjectError
    from stages.common.params import Technique

    params = prepared.model_copy(update={"adapt": prepared.adapt.model_copy(update={"technique": Technique.qlora})})
    paths = prepared.paths.model_copy(update={"sft": str(tmp_path / "sft")})
    with pytest.raises(ProjectError, match="qlora needs a CUDA GPU"):
        adapt.run(params, paths)
    assert not (tmp_path / "sft").exists()
