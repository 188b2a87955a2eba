"""The model record: what rebuilds an nsrep model or head, typed and versioned for files.

Every model from :func:`nsrep.create_model` and every head from :func:`nsrep.create_head` carries
``nsrep_config``, a plain dict of the keywords that rebuild it (``create_model(**model.nsrep_config)``,
``create_head(**head.nsrep_config)``). :class:`ModelRecord` is the typed view of such a dict: which builder
(``kind``: ``"model"`` or ``"head"``), the architecture or head name, and the remaining keywords. Files
(deploy folders' ``config.json``, training checkpoints) hold :meth:`ModelRecord.to_dict`, which carries the
record version:

- version 1: the bare keyword dict, with ``arch`` (a model) or ``name`` (a head), as written before records
  were versioned; it still reads.
- version 2: ``{"record_version": 2, "kind": ..., "name": ..., "options": {...}}``.

A file of any other version is refused, naming the version found and the ones this nsrep reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nsrep.models.heads import create_head
from nsrep.models.registry import create_model

__all__ = ["KINDS", "READABLE_VERSIONS", "RECORD_VERSION", "ModelRecord"]

RECORD_VERSION = 2
READABLE_VERSIONS = (1, 2)
KINDS = ("model", "head")
_NAME_KEY = {"model": "arch", "head": "name"}  # the keyword that names what to build, per kind
VERSION_KEY = "record_version"


@dataclass(frozen=True)
class ModelRecord:
    """Which builder (``kind``), what it builds (``name``: architecture or head) and its other keywords."""

    kind: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model record kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model record name must be a non-empty string, got {self.name!r}")
        name_key = _NAME_KEY[self.kind]
        if name_key in self.options:
            raise ValueError(f"model record options must not repeat {name_key!r} (it is the record's name)")
        object.__setattr__(self, "options", dict(self.options))

    @property
    def deploy(self) -> bool:
        """Whether the record builds the plain folded form."""
        return bool(self.options.get("deploy", False))

    def keywords(self) -> dict[str, Any]:
        """The builder's keywords (the ``nsrep_config`` form): ``create_model(**record.keywords())``."""
        return {_NAME_KEY[self.kind]: self.name, **self.options}

    def without(self, *keys: str) -> ModelRecord:
        """The same record without the options ``keys``."""
        return ModelRecord(self.kind, self.name, {k: v for k, v in self.options.items() if k not in keys})

    def build(self, **changes: Any) -> nn.Module:
        """Build the model or head this record describes (``changes`` override its keywords)."""
        keywords = {**self.keywords(), **changes}
        return create_head(**keywords) if self.kind == "head" else create_model(**keywords)

    def to_dict(self) -> dict[str, Any]:
        """The current (version 2) form for JSON files and checkpoints."""
        return {VERSION_KEY: RECORD_VERSION, "kind": self.kind, "name": self.name, "options": dict(self.options)}

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> ModelRecord:
        """The record of an ``nsrep_config`` dict (also a version-1 file): ``arch`` -> a model, ``name`` -> a head."""
        if not isinstance(keywords, Mapping):
            raise ValueError(f"a model record must be a mapping, got {type(keywords).__name__}")
        for kind, key in _NAME_KEY.items():
            if key in keywords:
                options = {k: v for k, v in keywords.items() if k != key}
                return cls(kind, keywords[key], options)
        raise ValueError(
            f"not an nsrep model record: it names neither an architecture ('arch') nor a head ('name'); "
            f"keys: {', '.join(map(str, keywords)) or 'none'}"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "the file") -> ModelRecord:
        """Read a record of any readable version (:data:`READABLE_VERSIONS`); others are refused."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} does not hold a model record (got {type(data).__name__})")
        version = data.get(VERSION_KEY, 1)
        if version not in READABLE_VERSIONS:
            readable = ", ".join(map(str, READABLE_VERSIONS))
            raise ValueError(
                f"{source} has model record version {version!r}; this nsrep reads versions {readable} "
                "(a newer nsrep wrote it?)"
            )
        if version == 1:
            return cls.from_keywords(data)
        missing = [k for k in ("kind", "name", "options") if k not in data]
        if missing:
            raise ValueError(f"{source}: model record version {version} lacks {', '.join(missing)}")
        return cls(data["kind"], data["name"], data["options"])

    @classmethod
    def of(cls, module: nn.Module) -> ModelRecord:
        """The record of an nsrep model or head (its ``nsrep_config``)."""
        config = getattr(module, "nsrep_config", None)
        if not isinstance(config, Mapping):
            raise ValueError(
                f"{type(module).__name__} is not an nsrep model or head (no nsrep_config): build it with "
                "nsrep.create_model or nsrep.create_head"
            )
        return cls.from_keywords(config)
