from stages.common.io import read_json


def test_prompt_search_records_dev_scores(prepared, prompted):
    prompt = read_json(prepared.paths.prompt)
    assert set(prompt["dev_scores"]) == {"0", "1"}
    assert prompt["shots"] in (0, 1) and len(prompt["examples"]) == prompt["shots"]
    metrics = read_json(f"{prepared.paths.metrics}/prompt_search.json")
    assert metrics["shots"] == prompt["shots"]
    assert metrics[f"1_shot.{prompt['metric']}"] == prompt["dev_scores"]["1"]
