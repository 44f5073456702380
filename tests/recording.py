"""A view of the validated params that records every key a stage reads, for tests/test_dvc.py's params check.

`recorded(params, stage)` wraps the pydantic models: a field that is itself a model (or a list of them) comes back
wrapped, with its dotted path; any other value is a leaf and its path is recorded as read. A property or a method
of our own models runs with the view as `self`, so what it reads is recorded key by key (`prompt.fields` reads
`prompt.template`); pydantic's own methods (`model_dump`, ...) read the whole subtree, and say so.
"""

from __future__ import annotations

import functools

from pydantic import BaseModel

READS: dict[str, set[str]] = {}  # stage -> the dotted keys it read (paths.* included; the check leaves them out)


class Recorded:
    __slots__ = ("_model", "_path", "_reads")

    def __init__(self, model: BaseModel, path: str, reads: set[str]):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_reads", reads)

    def _key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def __getattr__(self, name: str):
        model = self._model
        if name in type(model).model_fields:
            return wrap(getattr(model, name), self._key(name), self._reads)
        attr = getattr(type(model), name, None)
        if isinstance(attr, property):  # our own derived value: computed from the fields it reads
            return attr.fget(self)
        if callable(attr) and name in vars(type(model)):  # our own method: runs on the view
            return functools.partial(attr, self)
        self._reads.add(self._path or "<all>")  # pydantic's machinery (model_dump, ...): the whole subtree
        return getattr(model, name)

    def __setattr__(self, name, value):
        raise AttributeError("params are read-only")

    def __eq__(self, other):
        self._reads.add(self._path or "<all>")
        return self._model == (other._model if isinstance(other, Recorded) else other)

    def __hash__(self):
        return hash(id(self._model))

    def __repr__(self):
        return f"Recorded({self._path or 'params'})"


def wrap(value, path: str, reads: set[str]):
    if isinstance(value, BaseModel):
        return Recorded(value, path, reads)
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        return [Recorded(v, path, reads) for v in value]  # one path for every item: DVC tracks the list
    reads.add(path)
    return value


def recorded(params: BaseModel, stage: str):
    """`params` as the stage `stage` sees it, its reads collected in READS[stage]."""
    return Recorded(params, "", READS.setdefault(stage, set()))
