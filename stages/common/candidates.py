"""Each candidate model against the scope, before anything is measured: the filters select applies at run time
(licence, languages, hosting, residency, commercial use, context, architecture), each verdict with its reason.

Pure: params and the catalog that ships with them (catalog.yaml), no data or model file read. The checklist's rules (stages/common/rules.py) share the region and licence
checks below; select records every verdict in its table (`lifecycle select --explain`), scope lists the failures.
"""

from __future__ import annotations

from stages.common.params import Candidate, Params, Phase

# From an MVP on the model is used commercially: a licence that forbids it is refused (before, only warned of).
COMMERCIAL_FROM = Phase.mvp

# Cloud region names by residency area: a deployment region must name one of the area's prefixes.
REGION_PREFIXES = {
    "eu": ("eu", "europe"),
    "us": ("us",),
    "apac": ("ap", "asia", "australia"),
    "ca": ("ca", "northamerica-northeast"),
    "uk": ("uk", "eu-west-2", "europe-west2"),
}


def in_region(where: str, region: str) -> bool:
    """Does a cloud region (eu-west-1, europe-west4, us-east-1) or a coarse code (eu) lie in `region`?"""
    if region == "any":
        return True
    where = where.lower()
    return where == region or where.startswith(tuple(p for p in REGION_PREFIXES.get(region, (region,))))


def forbids_commercial_use(c: Candidate) -> bool:
    """Does the catalog say the candidate's licence forbids commercial use? (A model it does not list: no verdict.)"""
    return bool(c.entry) and not c.entry.commercial_use


def candidate_filters(c: Candidate, params: Params) -> dict[str, str | None]:
    """Each scope filter's verdict on a candidate before anything is measured: None (passes) or why it fails.
    Pure; select records these in its table, the plan lists the failures."""
    s = params.scope
    entry = c.entry
    missing = sorted(set(s.languages) - set(c.languages))
    regions = entry.api.regions if entry and entry.api else None
    return {
        "licence": None if c.licence in s.licences else f"licence {c.licence} not in scope.licences {s.licences}",
        "languages": f"does not cover languages {missing}" if missing else None,
        "hosting": (
            "SaaS-hosted and the scope declares personal data (it may not leave your infrastructure)"
            if c.hosting == "saas" and s.privacy.personal_data
            else None
        ),
        "residency": (
            f"processes data in {regions}, the residency region is {s.residency.region}"
            if regions and c.hosting == "saas" and not any(in_region(r, s.residency.region) for r in regions)
            else None
        ),
        "commercial_use": (
            f"licence {entry.licence} forbids commercial use (phase {s.phase.value})"
            if forbids_commercial_use(c) and s.phase.rank >= COMMERCIAL_FROM.rank
            else None
        ),
        "context": (
            f"context {entry.context_length} tokens < data.max_length {params.data.max_length}"
            if entry and entry.context_length < params.data.max_length
            else None
        ),
        # The stages tune and serve causal LMs: an encoder-only or encoder-decoder model is listed, not used.
        "architecture": (
            f"{entry.architecture}: this pipeline tunes and serves decoder-only (causal) models"
            if entry and entry.kind == "open" and entry.architecture != "decoder-only"
            else None
        ),
    }


def candidate_problems(c: Candidate, params: Params) -> list[str]:
    """Why a candidate fails the scope, one reason per failed filter (none: admissible)."""
    return [reason for reason in candidate_filters(c, params).values() if reason]
