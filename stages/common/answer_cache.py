"""Evaluate's answers, kept by what decides them, so that no variant is answered twice.

A ladder rung that adds a variant, or a changed KPI threshold, re-runs evaluate; the untuned baselines it measured
before have not changed, and regenerating them was most of a real model's evaluation. An entry's key is the digest
of everything that decides its answers and figures: the weights (every file of the base and the adapter), the
engine and its settings (GGUF type, OpenVINO's properties and version), the rendered prompts (so the rows, the
template, the shots and the retrieved passages), the decoding settings and the metrics measured. An entry that
this run did not use is removed at its end (`prune`), so the folder holds one run's worth.

The folder (`paths.answers`) is an output of the evaluate stage that DVC keeps between runs (`persist: true`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from stages.common.io import write_json

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf", "config.json", "generation_config.json", "adapter_config.json")


def weights_digest(*refs: str | None) -> str:
    """A digest of the weights behind `refs`: a local folder's weight and config files, byte for byte; a hub id by
    its name only (a new upstream revision under the same id is not seen: pin `revision` for that)."""
    digest = hashlib.sha256()
    for ref in filter(None, refs):
        folder = Path(ref)
        if not folder.is_dir():
            digest.update(ref.encode())
            continue
        for pattern in WEIGHT_FILES:
            for f in sorted(folder.glob(pattern)):
                digest.update(f.name.encode())
                with open(f, "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()


class AnswerCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.used: set[str] = set()
        self.hits = self.misses = 0

    @staticmethod
    def key(**parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        self.used.add(key)
        f = self.folder / f"{key}.json"
        if not f.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(f.read_text(encoding="utf-8"))

    def put(self, key: str, entry: dict) -> None:
        self.used.add(key)
        write_json(self.folder / f"{key}.json", entry)  # through a temporary file: never half-written

    def prune(self) -> int:
        """Removes the entries this run did not use; returns how many."""
        stale = [f for f in self.folder.glob("*.json") if f.stem not in self.used]
        for f in stale:
            f.unlink()
        return len(stale)
