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


def test_raft_rows_put_the_oracle_among_distractors(prepared, indexed):
    """RAFT's training contexts: k chunks; the question's own source chunk (the one holding its answer) among
    retrieved distractors, or, in the 1 - oracle_fraction share, distractors only; no source: what retrieval finds."""
    from stages import adapt
    from stages.common.retrieval import Retriever

    retriever = Retriever.open(prepared.paths.index)
    k = retriever.top_k
    rows = [{"prompt": "What does `heapq.heappush` do?", "completion": "Push item onto heap, maintaining the heap "
             "invariant.", "source": "heapq.heappush"},
            {"prompt": "What does `heapq.merge` do?", "completion": "Merge multiple sorted inputs into a single "
             "sorted output.", "source": "heapq.merge"},
            {"prompt": "What does `heapq.heapify` do?", "completion": "x", "source": "not.in.the.index"}]
    always = adapt.raft_rows(rows, retriever, oracle_fraction=1.0, seed=1)
    never = adapt.raft_rows(rows, retriever, oracle_fraction=0.0, seed=1)
    for row, with_oracle, without in zip(rows[:2], always, never):
        assert len(with_oracle["context"]) == len(without["context"]) == k
        holding = [c for c in with_oracle["context"] if row["completion"] in " ".join(c.split())]
        assert len(holding) == 1 and holding[0].startswith(row["source"] + ":"), "the oracle is the answer's chunk"
        assert not any(c.startswith(row["source"] + ":") for c in without["context"]), "distractors only"
    retrieved = [c["text"] for c in retriever.search([rows[2]["prompt"]])[0]]
    assert always[2]["context"] == never[2]["context"] == retrieved
    positions = {[i for i, c in enumerate(r["context"]) if c.startswith(rows[0]["source"] + ":")][0]
                 for r in (adapt.raft_rows(rows[:1], retriever, 1.0, seed) [0] for seed in range(12))}
    assert len(positions) == k, "the oracle's position varies, so that position says nothing"


def test_raft_trained_sft_answers_with_retrieval(prepared, adapted):
    """The tiny project trains with RAFT: its training rows were rendered with two chunks each."""
    assert prepared.adapt.raft.enabled
    metrics = read_json(Path(prepared.paths.metrics) / "adapt.json")
    assert metrics["raft_rows_with_oracle"] > 0 and metrics["trained"]
