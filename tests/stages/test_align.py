import csv
from pathlib import Path

import pytest

from stages.common.io import read_json, read_jsonl


def _log_probs(model, tok, prompt: str, completion: str) -> float:
    """Sum of log-probabilities of the completion's tokens after the prompt."""
    import torch

    p = tok(prompt)["input_ids"]
    ids = tok(prompt + completion)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    return float(sum(logits[i - 1, ids[i]] for i in range(len(p), len(ids))))


def test_dpo_moves_the_sft_model(prepared, aligned):
    import torch

    from stages.common.models import load_model
    from stages.common.training import sft_model

    sft, _ = sft_model(prepared.paths, "fp32")
    dpo = load_model(str(Path(prepared.paths.aligned) / "dpo"))
    sft_state, dpo_state = sft.state_dict(), dpo.state_dict()
    assert sft_state.keys() == dpo_state.keys(), "aligned is a plain merged model of the same architecture"
    changed = [k for k in sft_state if not torch.equal(sft_state[k], dpo_state[k])]
    assert changed, "DPO changed the weights"
    assert all("embed" not in k for k in changed), "LoRA targets linear layers only"
    metrics = read_json(Path(prepared.paths.metrics) / "align_dpo.json")
    assert metrics["trained"] and metrics["last_reward_accuracy"] is not None and metrics["resumed_from_step"] == 0


def test_dpo_widens_the_chosen_rejected_margin(separable):
    """DPO's implicit reward: log pi(chosen) - log pi(rejected) grows relative to the SFT model it started from."""
    from stages import align
    from stages.common.models import load_model, load_tokenizer, renderer_for
    from stages.common.training import preference_rows, sft_model

    params, paths = separable["params"], separable["paths"]
    dpo = params.align.dpo.model_copy(
        update={
            "trainer": params.align.dpo.trainer.model_copy(
                update={"max_steps": 15, "learning_rate": 1e-2, "per_device_train_batch_size": 8}
            )
        }
    )
    params = params.model_copy(update={"align": params.align.model_copy(update={"dpo": dpo})})
    align.run(params, paths, "dpo")
    sft, _ = sft_model(paths, "fp32")
    tuned = load_model(str(Path(paths.aligned) / "dpo"))
    tok = load_tokenizer(paths.sft)
    pairs = preference_rows(renderer_for(params, tok, sft), read_jsonl(Path(paths.processed) / "preference.jsonl"))[:24]

    def margin(model):
        return sum(
            _log_probs(model, tok, r["prompt"], r["chosen"]) - _log_probs(model, tok, r["prompt"], r["rejected"])
            for r in pairs
        ) / len(pairs)

    assert margin(tuned) > margin(sft) + 0.5, (margin(tuned), margin(sft))
    curve = list(csv.DictReader(open(Path(paths.metrics) / "align_dpo_curve.csv")))
    assert curve and float(curve[-1]["reward"]) > float(curve[0]["reward"]), "the logged chosen - rejected margin grew"


@pytest.mark.parametrize("optimizer", ["rloo", "grpo"])
def test_rlhf_raises_the_reward_model_score(separable, optimizer):
    """RLOO and GRPO against the trained reward model: the mean reward of the sampled answers goes up. Four-token
    answers at temperature 0.5: the tiny test model is nearly uniform over its vocabulary, where a policy gradient
    spread over many tokens at temperature 1 barely moves it in a test's steps."""
    from mlflow import MlflowClient

    from stages import align

    params, paths = separable["params"], separable["paths"]
    rlhf = params.align.rlhf.model_copy(
        update={
            "optimizer": optimizer,
            "beta": 0.0,
            "temperature": 0.5,
            "max_completion_length": 4,
            "trainer": params.align.rlhf.trainer.model_copy(
                update={"max_steps": 60, "learning_rate": 5e-2, "per_device_train_batch_size": 32, "logging_steps": 1}
            ),
        }
    )
    params = params.model_copy(update={"align": params.align.model_copy(update={"rlhf": rlhf})})
    metrics = align.run(params, paths, "rlhf")["metrics"]
    rewards = [float(r["reward"]) for r in csv.DictReader(open(Path(paths.metrics) / "align_rlhf_curve.csv"))]
    assert len(rewards) == 60
    # The first 20 steps' mean reward vs the last 20 (one step's 32 samples are noisy). Measured here: +0.42 (RLOO)
    # and +0.13 (GRPO) at the project's seed, +0.11 to +0.30 at two other seeds; never a fall in 12 runs.
    first, last = sum(rewards[:20]) / 20, sum(rewards[-20:]) / 20
    assert last > first + 0.05, rewards
    card = read_json(Path(paths.reward) / "lifecycle.json")
    assert metrics["reward_model"] == f"{card['registered_model']} v{card['version']}"
    run = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(params.project.name).experiment_id],
        filter_string="tags.`lifecycle.stage` = 'align@rlhf'",
        order_by=["start_time DESC"],
        max_results=1,
    )[0]
    assert run.data.tags["lifecycle.reward_model"] == metrics["reward_model"], "the policy names its reward model"
    assert "kl" in run.data.metrics or any(k.startswith("rewards/") for k in run.data.metrics)


def test_rule_rewards():
    from stages.align import rule_reward
    from stages.common.params import RuleRewards

    rules = RuleRewards(max_words=4, format=r"[A-Z].*\.", forbidden_terms=["password"])
    assert rule_reward(rules, "Return the heap.") == 0
    assert rule_reward(rules, "Return the smallest item of the heap.") == pytest.approx(-0.75)
    assert rule_reward(rules, "return it") == -1
    assert rule_reward(rules, "Print the password.") == -1
    assert rule_reward(RuleRewards(), "anything at all") == 0


def test_a_method_not_listed_is_refused(tiny, tmp_path):
    from stages import align
    from stages.common.errors import ProjectError

    params = tiny.model_copy(update={"align": tiny.align.model_copy(update={"methods": []})})
    paths = tiny.paths.model_copy(update={"aligned": str(tmp_path / "aligned"), "metrics": str(tmp_path)})
    with pytest.raises(ProjectError, match="does not list dpo"):
        align.run(params, paths, "dpo")
    assert not (tmp_path / "aligned").exists(), "refused before anything is written"


def test_not_reached_marks_every_method(tiny, tmp_path):
    from stages import align

    paths = tiny.paths.model_copy(update={"aligned": str(tmp_path / "aligned"), "metrics": str(tmp_path)})
    align.not_reached(tiny, paths, "not run: the ladder stopped")
    for method in ("dpo", "rlhf"):
        assert read_json(tmp_path / "aligned" / method / "lifecycle.json")["model"] is False
        assert read_json(tmp_path / f"align_{method}.json")["not_reached"] == "not run: the ladder stopped"
