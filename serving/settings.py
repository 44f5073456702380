"""What this server serves and how: the model's tag and its serving settings (params `serve:`), read once at start-up.

    LIFECYCLE_SERVE_MAX_QUEUE=4 bentoml serve <bento>                          # one setting overridden
    LIFECYCLE_MODEL_TAG=<name:version> bentoml serve serving.service:Lifecycle   # from the repository

The package stage writes both into the bento (packaged_model.json, the settings as `params.Serve.model_dump()`) and
the settings into the model's folder too (serve.json), so a model served from the repository, which has no
packaged_model.json, runs as it was packaged. Nothing here knows a default: the params models are the one place
that does, and the bento does not carry them (tests/serving/test_settings.py holds both carriers to every field).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MODEL_TAG_ENV = "LIFECYCLE_MODEL_TAG"
PACKAGED_MODEL = Path(__file__).with_name("packaged_model.json")
SERVE_FILE = "serve.json"  # the settings in the packaged model's folder


def load(packaged_model: Path = PACKAGED_MODEL, environ=os.environ) -> tuple[str, dict]:
    """The tag of the model to serve and its serving settings, `LIFECYCLE_SERVE_<SETTING>` overrides applied."""
    info = json.loads(packaged_model.read_text(encoding="utf-8")) if packaged_model.is_file() else {}
    tag = environ.get(MODEL_TAG_ENV) or info.get("tag")
    if not tag:
        raise RuntimeError(
            f"no packaged model: {packaged_model.name} is missing and {MODEL_TAG_ENV} is not set; "
            "serve the bento that `lifecycle run` built (`lifecycle serve`)"
        )
    return tag, overridden(info.get("serve") or packaged_with(tag), environ)


def packaged_with(tag: str) -> dict:
    """The settings the model was packaged with (serve.json in its folder in BentoML's model store): the service
    run from the repository."""
    import bentoml

    carried = Path(bentoml.models.get(tag).path) / SERVE_FILE
    if not carried.is_file():
        raise RuntimeError(
            f"model {tag} carries no serving settings ({SERVE_FILE}): package it again (`lifecycle run`) "
            "or serve the bento that packaged it"
        )
    return json.loads(carried.read_text(encoding="utf-8"))


def overridden(serve: dict, environ) -> dict:
    """`LIFECYCLE_SERVE_<SETTING>=value` replaces one scalar setting, parsed as the packaged value's type."""
    settings = dict(serve)
    for key, value in serve.items():
        given = environ.get(f"LIFECYCLE_SERVE_{key.upper()}")
        if given is None or not isinstance(value, (int, float, str)):
            continue
        try:
            settings[key] = type(value)(given)
        except ValueError:
            raise RuntimeError(
                f"LIFECYCLE_SERVE_{key.upper()}={given!r}: `serve.{key}` takes {type(value).__name__} values"
            ) from None
    return settings


def registered(packaged_model: Path = PACKAGED_MODEL) -> dict:
    """The registry version the bento serves (name, version, alias at packaging), for the traces; {} from the
    repository."""
    info = json.loads(packaged_model.read_text(encoding="utf-8")) if packaged_model.is_file() else {}
    return info.get("registered", {})


TAG, SERVE = load()
REGISTERED = registered()
