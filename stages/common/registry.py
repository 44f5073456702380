"""The MLflow model registry as the record of what ships: `champion` (served), `challenger` (passed its gates,
not shown to be better), and the history of champions, so a promotion or a rollback is one command.

`decide` is pure: package and the tests call it with the paired comparison of the new version against the
champion on the same eval rows. The rest are thin MlflowClient calls: the registered model's tag
`lifecycle.champion_history` (a JSON list of versions) remembers who held `champion`, in order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "lifecycle.champion_history"


@dataclass(frozen=True)
class Verdict:
    alias: str  # champion or challenger
    why: str


def decide(
    champion: int | None,
    comparison: dict | None,
    metric: str,
    higher: bool,
    level: float = 0.95,
    policy: str = "beats_champion",
    not_compared: str = "",
) -> Verdict:
    """Does a new version (that passed its gates) take `champion`? With `package.promote: beats_champion`, only by
    beating the current champion on the primary metric with confidence: the paired difference's interval lies
    wholly on the better side of zero. Without a comparison (the champion was evaluated on other rows, or the
    metric is one number measured on the model; `not_compared` says which) the new one is challenger. With
    `always`, every version that passes its gates takes champion."""
    if champion is None:
        return Verdict(CHAMPION, "no champion yet: the first version to pass its gates")
    if policy == "always":
        return Verdict(CHAMPION, f"replaces champion v{champion} (`package.promote: always`)")
    if comparison is None:
        return Verdict(
            CHALLENGER,
            f"{not_compared or 'no paired comparison'}, so it cannot be shown to beat "
            f"champion v{champion}; promote by hand with `lifecycle promote VERSION`",
        )
    d, low, high = comparison["difference"], comparison["ci_low"], comparison["ci_high"]
    figures = f"{metric} {d:+.4f} [{level:.0%} CI {low:+.4f}, {high:+.4f}], p={comparison['p_value']:.3g}"
    if (low > 0) if higher else (high < 0):
        return Verdict(CHAMPION, f"beats champion v{champion} on the same rows: {figures}")
    return Verdict(CHALLENGER, f"does not beat champion v{champion} with confidence: {figures}")


def champion_version(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def history(client, name: str) -> list[int]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def crown(client, name: str, version: int, reason: str) -> None:
    """Give `version` the champion alias, remember it in the history, and tag the version with why."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    past = history(client, name)
    if past[-1:] != [version]:  # promoting the champion again changes nothing in the history
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(past + [version]))
    client.set_model_version_tag(
        name, str(version), "lifecycle.champion_since", f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {reason}"
    )
    if str(client.get_registered_model(name).aliases.get(CHALLENGER)) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)


def promote(client, name: str, version: int, reason: str) -> int | None:
    """`lifecycle promote`: make `version` the champion by hand. Returns the previous champion."""
    client.get_model_version(name, str(version))  # raises, naming the version, when it does not exist
    previous = champion_version(client, name)
    crown(client, name, version, f"promoted by hand: {reason}")
    return previous


def rollback(client, name: str, reason: str) -> tuple[int, int]:
    """`lifecycle rollback`: give `champion` back to the version that held it before (the history is a stack:
    a rollback pops the current champion). Returns (from, to)."""
    past = history(client, name)
    current = champion_version(client, name)
    if current is None or len(past) < 2 or past[-1] != current:
        raise LookupError(
            f"model {name!r} has no earlier champion to roll back to (champion v{current}, "
            f"champion history {past}; an alias moved outside `lifecycle` is not in the history)"
        )
    target = past[-2]
    client.set_registered_model_alias(name, CHAMPION, str(target))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(past[:-1]))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    client.set_model_version_tag(name, str(current), "lifecycle.rolled_back", f"{stamp}: {reason}")
    client.set_model_version_tag(
        name, str(target), "lifecycle.champion_since", f"{stamp}: rollback from v{current}: {reason}"
    )
    return current, target


def versions(client, name: str) -> list[dict]:
    """Every version, newest first, with its aliases and the tags package wrote (variant, headline metrics)."""
    aliases: dict[str, list[str]] = {}
    for alias, v in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(v), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        rows.append(
            {
                "version": int(mv.version),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)),
                "run_id": mv.run_id,
                "tags": dict(mv.tags),
            }
        )
    return sorted(rows, key=lambda r: -r["version"])


# What the bento installs; pinned to what this pipeline ran with (bentoml would otherwise lock to the newest).
SERVING_PACKAGES = ("transformers", "tokenizers", "pydantic", "fastapi")
# The transformers engine's, and the registered weights' (an MLflow model loads them in torch): an image that
# serves on OpenVINO without a cross-encoder carries no torch (~750 MB).
TORCH_PACKAGES = ("torch", "safetensors")
# The served model's traces (MLflow's tracing SDK, not the whole of MLflow) and their redaction (pii.py's).
TRACING_PACKAGES = ("mlflow-tracing", "phonenumbers", "python-stdnum")
ENGINE_PACKAGES = ("openvino", "openvino-genai", "openvino-tokenizers")  # the openvino engine (generation.py)
RETRIEVAL_PACKAGES = ("chromadb", "bm25s", "openvino")  # a +rag variant ships: the index and its exported embedder
RERANK_PACKAGES = ("sentence-transformers", *TORCH_PACKAGES)  # an index with a cross-encoder (`rerank_model`)


def bento_packages(on_openvino: bool, quantizer: str | None, retrieves: bool, reranks: bool) -> tuple[str, ...]:
    """What a bento installs: torch only where something in it runs torch (the transformers engine, a torch
    quantizer, a cross-encoder); the openvino engine and the index's exported embedder do not."""
    packages = SERVING_PACKAGES + TRACING_PACKAGES + (ENGINE_PACKAGES if on_openvino else TORCH_PACKAGES)
    packages += ((quantizer,) if quantizer else ()) + (RETRIEVAL_PACKAGES if retrieves else ())
    packages += RERANK_PACKAGES if reranks else ()
    return tuple(dict.fromkeys(packages))  # each once, in order


def pinned(packages) -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p).split('+')[0]}" for p in packages]
