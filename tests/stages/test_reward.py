from pathlib import Path

from stages.common.io import read_json


def test_reward_model_learns_a_separable_preference_above_chance(separable):
    from stages.common.io import read_jsonl

    metrics = separable["reward"]["metrics"]
    assert metrics["trained"] and metrics["chance_accuracy"] == 0.5
    assert metrics["heldout_accuracy"] >= 0.9, metrics
    assert metrics["heldout_margin"] > 0, "chosen answers score higher on average"
    pairs = len(read_jsonl(Path(separable["paths"].processed) / "preference.jsonl"))
    assert metrics["heldout_pairs"] == round(0.1 * pairs), "align.rlhf.reward_model.eval_fraction held out"
    assert metrics["heldout_pairs"] + metrics["train_pairs"] + metrics["train_pairs_too_long"] == pairs


def test_the_reward_model_is_versioned_and_registered(separable):
    from mlflow import MlflowClient
    from transformers import AutoModelForSequenceClassification

    paths = separable["paths"]
    card = read_json(Path(paths.reward) / "lifecycle.json")
    model = AutoModelForSequenceClassification.from_pretrained(paths.reward)
    assert model.config.num_labels == 1, "a scalar reward head"
    version = MlflowClient().get_model_version(card["registered_model"], str(card["version"]))
    assert card["registered_model"] == "stdlib-helpdesk-reward"
    assert float(version.tags["reward.heldout_accuracy"]) == card["heldout_accuracy"]
    curve = (Path(paths.metrics) / "reward_curve.csv").read_text().splitlines()
    assert curve[0] == "step,loss,accuracy" and len(curve) > 3, "the DVC plot of the training curve"


def test_no_preference_pairs_no_reward_model(prepared, adapted, tmp_path):
    from stages import reward

    params = prepared.model_copy(
        update={
            "data": prepared.data.model_copy(
                update={"sources": prepared.data.sources.model_copy(update={"preference": None})}
            )
        }
    )
    paths = prepared.paths.model_copy(update={"reward": str(tmp_path / "reward"), "metrics": str(tmp_path)})
    reward.run(params, paths)
    assert read_json(tmp_path / "reward" / "lifecycle.json") == {"trained": False, "why": "no preference pairs"}
