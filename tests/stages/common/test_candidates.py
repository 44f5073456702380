"""The candidate filters' shared checks: where a region lies, and when a licence's ban on commercial use counts."""

from __future__ import annotations

from stages.common.candidates import COMMERCIAL_FROM, forbids_commercial_use, in_region
from stages.common.params import Candidate, Phase


def test_in_region():
    assert in_region("eu-west-1", "eu") and in_region("europe-west4", "eu")
    assert not in_region("us-east-1", "eu") and in_region("anywhere", "any")


def test_commercial_use_is_the_catalogs_word_and_counts_from_an_mvp_on():
    assert forbids_commercial_use(Candidate(name="nc", catalog="c4ai-command-r-v01", licence="apache-2.0"))
    assert not forbids_commercial_use(Candidate(name="q", catalog="qwen2.5-0.5b-instruct"))
    assert not forbids_commercial_use(Candidate(name="x", hub_id="org/x", licence="mit", languages=["en"])), (
        "a model the catalog does not list"
    )
    assert [p for p in Phase if p.rank >= COMMERCIAL_FROM.rank] == [Phase.mvp, Phase.release]
