"""`fields:` is one-to-one: two columns mapped to one record field are an error naming both, except into
`references`, which several columns fill as a list. Pure checks: what params validation and the data stage call."""

from __future__ import annotations

from stages.common.records import field_mapping_problems


def test_two_columns_into_an_eval_answer_name_both_and_suggest_references():
    (problem,) = field_mapping_problems("eval", {"question": "prompt", "gold": "completion", "gold_alt": "completion"})
    assert problem.startswith("`data.sources.eval.fields` maps both `gold` and `gold_alt` to `completion`")
    assert "all but one would be lost" in problem
    assert "`fields: {gold: references, gold_alt: references}`" in problem


def test_several_columns_into_another_field_name_them_all():
    (problem,) = field_mapping_problems("sft", {"a": "prompt", "b": "prompt", "c": "prompt", "d": "completion"})
    assert problem.startswith("`data.sources.sft.fields` maps `a`, `b` and `c` to `prompt`")
    assert "keep only the one you mean" in problem


def test_the_source_is_named_when_given():
    (problem,) = field_mapping_problems("dev", {"x": "reference", "y": "reference"}, label="data/dev.csv")
    assert problem.startswith("`data.sources.dev.fields` (data/dev.csv) maps both `x` and `y` to `reference`")


def test_one_to_one_and_several_into_references_are_fine():
    assert field_mapping_problems("sft", {"instruction": "prompt", "output": "completion"}) == []
    assert field_mapping_problems("eval", {"q": "prompt", "gold": "references", "gold_alt": "references"}) == []
    assert field_mapping_problems("eval", {"gold": "reference", "alt": "references"}) == []


def test_a_rows_own_column_under_a_mapped_name_is_a_clash():
    fields = {"question": "prompt"}
    assert field_mapping_problems("sft", fields) == [], "params alone cannot know the columns"
    (problem,) = field_mapping_problems("sft", fields, columns=["question", "prompt", "completion"])
    assert "maps `question` to `prompt`, and the row also has a column named `prompt`" in problem
    assert "`prompt: original_prompt`" in problem
    # The row's own `references` column is one more reference, not a clash.
    assert field_mapping_problems("eval", {"gold": "references"}, columns=["references", "gold"]) == []
