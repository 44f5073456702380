import hashlib
from pathlib import Path

import pytest

from stages.common.io import read_json, read_jsonl


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
    assert metrics["trainable_parameters"] == sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n)
    assert metrics["output_bytes"] == (Path(prepared.paths.sft) / "adapter_model.safetensors").stat().st_size
    assert metrics["tokens_per_second"] > 0 and metrics["trained_tokens"] > 0 and metrics["peak_memory_mib"] > 0
    assert metrics["global_step"] == prepared.adapt.trainer.max_steps and metrics["resumed_from_step"] == 0


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
    rows = [
        {
            "prompt": "What does `heapq.heappush` do?",
            "completion": "Push item onto heap, maintaining the heap invariant.",
            "source": "heapq.heappush",
        },
        {
            "prompt": "What does `heapq.merge` do?",
            "completion": "Merge multiple sorted inputs into a single sorted output.",
            "source": "heapq.merge",
        },
        {"prompt": "What does `heapq.heapify` do?", "completion": "x", "source": "not.in.the.index"},
    ]
    always = adapt.raft_rows(rows, retriever, oracle_fraction=1.0, seed=1)
    never = adapt.raft_rows(rows, retriever, oracle_fraction=0.0, seed=1)
    for row, with_oracle, without in zip(rows[:2], always, never):
        assert len(with_oracle["context"]) == len(without["context"]) == k
        holding = [c for c in with_oracle["context"] if row["completion"] in " ".join(c.split())]
        assert len(holding) == 1 and holding[0].startswith(row["source"] + ":"), "the oracle is the answer's chunk"
        assert not any(c.startswith(row["source"] + ":") for c in without["context"]), "distractors only"
    retrieved = [c["text"] for c in retriever.search([rows[2]["prompt"]])[0]]
    assert always[2]["context"] == never[2]["context"] == retrieved
    positions = {
        [i for i, c in enumerate(r["context"]) if c.startswith(rows[0]["source"] + ":")][0]
        for r in (adapt.raft_rows(rows[:1], retriever, 1.0, seed)[0] for seed in range(12))
    }
    assert len(positions) == k, "the oracle's position varies, so that position says nothing"


def test_raft_trains_every_row_with_retrieved_chunks_in_its_prompt(prepared, adapted):
    """The tiny project trains with RAFT (tests/conftest.py): every SFT row is counted once, the oracle share is
    about `oracle_fraction`, and the prompts the trainer sees carry the chunks in the project's context template."""
    from transformers import AutoConfig

    from stages import adapt
    from stages.common.io import read_jsonl
    from stages.common.models import load_tokenizer, renderer_for
    from stages.common.retrieval import Retriever

    raft = prepared.adapt.raft
    metrics = read_json(Path(prepared.paths.metrics) / "adapt.json")
    rows = read_jsonl(Path(prepared.paths.processed) / "sft.jsonl")
    with_oracle, without = metrics["raft_rows_with_oracle"], metrics["raft_rows_without_oracle"]
    assert with_oracle + without + metrics["raft_rows_without_source"] == len(rows), "each row counted once"
    assert with_oracle + without >= 5 and abs(with_oracle / (with_oracle + without) - raft.oracle_fraction) < 0.25
    retrieved = adapt.raft_rows(rows, Retriever.open(prepared.paths.index), raft.oracle_fraction, prepared.project.seed)
    tok = load_tokenizer(prepared.paths.sft)
    config = AutoConfig.from_pretrained(read_json(prepared.paths.selection)["selected"]["ref"])
    trained = adapt.sft_rows(renderer_for(prepared, tok, config, max_new_tokens=0), retrieved)
    template = prepared.prompt.context_template
    top_k = Retriever.open(prepared.paths.index).top_k
    for row, example in zip(retrieved, trained, strict=True):
        assert len(row["context"]) == top_k
        for chunk in row["context"]:
            assert template.format(text=" ".join(chunk.split())) in example["prompt"], "every chunk in the prompt"


def _adapt_with(prepared, tmp_path, **update):
    from stages import adapt

    params = prepared.model_copy(update={"adapt": prepared.adapt.model_copy(update=update)})
    paths = prepared.paths.model_copy(update={"sft": str(tmp_path / "sft"), "metrics": str(tmp_path / "metrics")})
    return params, paths, adapt.run(params, paths)["metrics"]


def test_full_fine_tuning_changes_every_weight(prepared, selected, indexed, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from stages.common.params import Technique

    _, paths, metrics = _adapt_with(
        prepared, tmp_path, technique=Technique.full, raft=prepared.adapt.raft.model_copy(update={"enabled": False})
    )
    base = AutoModelForCausalLM.from_pretrained(read_json(prepared.paths.selection)["selected"]["ref"]).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(paths.sft).state_dict()
    assert tuned.keys() == base.keys(), "the output is a whole model folder"
    unchanged = [k for k in base if torch.equal(base[k], tuned[k])]
    assert unchanged == [], f"every weight tensor trains: {unchanged}"
    assert metrics["trainable_percent"] == 100
    assert read_json(Path(paths.sft) / "lifecycle.json")["adapter"] is False


def test_prompt_tuning_trains_only_the_virtual_tokens(prepared, selected, indexed, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from stages.common.params import Technique

    pt = prepared.adapt.prompt_tuning
    params, paths, metrics = _adapt_with(
        prepared,
        tmp_path,
        technique=Technique.prompt_tuning,
        raft=prepared.adapt.raft.model_copy(update={"enabled": False}),
    )
    base_ref = read_json(prepared.paths.selection)["selected"]["ref"]
    base = AutoModelForCausalLM.from_pretrained(base_ref)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_ref), paths.sft)
    embedding = tuned.prompt_encoder["default"].embedding.weight
    assert embedding.shape == (pt.num_virtual_tokens, base.config.hidden_size)
    assert metrics["trainable_parameters"] == pt.num_virtual_tokens * base.config.hidden_size
    # Initialised from the init text's token embeddings (repeated to length): training moved them.
    init_ids = tuned.peft_config["default"]
    from stages.common.models import load_tokenizer

    ids = load_tokenizer(base_ref)(init_ids.prompt_tuning_init_text)["input_ids"]
    ids = (ids * pt.num_virtual_tokens)[: pt.num_virtual_tokens]
    start = base.get_input_embeddings().weight[ids]
    assert not torch.equal(embedding, start), "the virtual tokens trained"
    base_state = base.state_dict()
    for name, param in tuned.base_model.state_dict().items():
        assert torch.equal(param, base_state[name]), f"base weight {name} changed"
    assert read_json(Path(paths.sft) / "lifecycle.json")["adapter"] is True
    from stages.common.errors import ProjectError
    from stages.common.models import candidate_model

    with pytest.raises(ProjectError, match="soft prompt .* cannot be merged"):  # compared in evaluate, not shipped
        candidate_model({"ref": base_ref, "adapter": paths.sft})


def test_packing_trains(prepared, selected, indexed, tmp_path, monkeypatch):
    """`adapt.packing`: the trainer's dataset holds fewer sequences than there are SFT rows, several rows share a
    sequence (each keeps its own length, so attention stays within it), and that packed dataset trains."""
    import trl

    trainers = []

    class Spy(trl.SFTTrainer):  # the stage's own trainer, recorded to read the dataset it trained on
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(trl, "SFTTrainer", Spy)
    _, _, packed = _adapt_with(
        prepared, tmp_path, packing=True, raft=prepared.adapt.raft.model_copy(update={"enabled": False})
    )
    assert packed["packing"] is True and packed["trained_tokens"] > 0 and packed["global_step"] == 8
    (trainer,) = trainers
    rows = len(read_jsonl(Path(prepared.paths.processed) / "sft.jsonl"))
    sequences = trainer.train_dataset
    lengths = [len(s) for s in sequences["seq_lengths"]]
    assert len(sequences) < rows and sum(lengths) == rows, "every row kept, in fewer sequences"
    assert max(lengths) > 1, "several rows in one sequence"
    assert all(len(ids) <= prepared.adapt.trainer.max_length for ids in sequences["input_ids"])


# Checkpoints every 4 steps: the kill lands at the first, leaving 12 steps (seconds) to tell a resume from a restart.
STEPS = 16


@pytest.mark.parametrize("stage", ["adapt", "align"])
def test_a_killed_stage_resumes_from_its_checkpoint(prepared, selected, indexed, adapted, tmp_path, stage):
    """The stage as a process, SIGKILLed once its first checkpoint is on disk, then started again: it goes on from
    that step, and its output is either absent or complete, never half-written."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import REPO, tiny_params_dict

    raw = tiny_params_dict(Path(prepared.paths.selection).parents[1])
    raw["paths"].update(sft=str(tmp_path / "sft"), aligned=str(tmp_path / "aligned"), metrics=str(tmp_path / "metrics"))
    if stage == "adapt":
        raw["adapt"]["trainer"].update(max_steps=STEPS, save_steps=4)
        cmd, out = ["-m", "stages.adapt"], tmp_path / "sft"
    else:
        raw["paths"]["sft"] = prepared.paths.sft
        raw["align"]["dpo"]["trainer"].update(max_steps=STEPS, save_steps=4)
        cmd, out = ["-m", "stages.align", "--method", "dpo"], tmp_path / "aligned" / "dpo"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cmd = [sys.executable, *cmd, "--params", str(tmp_path / "params.yaml")]
    ckpts = tmp_path / ".checkpoints"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Bounded by the stage itself: it ends after max_steps, so the loop ends with or without a checkpoint.
        while not any(ckpts.glob("*/checkpoint-*/trainer_state.json")) and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "killed, not finished"
    saved = max(int(d.parent.name.split("-")[1]) for d in ckpts.glob("*/checkpoint-*/trainer_state.json"))
    assert not out.exists(), "killed: no half-written output"
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    metrics = read_json(tmp_path / "metrics" / ("adapt.json" if stage == "adapt" else "align_dpo.json"))
    assert metrics["resumed_from_step"] == saved > 0 and metrics["global_step"] == STEPS, metrics
    assert (out / ("adapter_model.safetensors" if stage == "adapt" else "model.safetensors")).is_file()
    assert not list(out.parent.glob(f".{out.name}.*.tmp")), "the killed run's temporary folder is gone"
    assert not any(ckpts.glob(f"{stage}-*")), "checkpoints are removed once the output is complete"
