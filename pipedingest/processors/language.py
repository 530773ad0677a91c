"""``detect-language``: the language of an article that does not state one.

Built on py3langid, the maintained fork of langid.py: a naive Bayes model over byte n-grams for 140
languages that ships inside the wheel (no download at run time, nothing fetched from a hub) and needs
numpy only. It is cheap enough for the reactor thread: about 0.1 ms for a sentence and 1.7 ms for 5,000
characters; on the news corpus (median 2,100 characters) 0.7 ms per article at the default ``max_chars``
of 2,000 (the title and the beginning of the body, which bounds what one article may cost) and 1.0 ms for
the whole text, against some 40 ms of CPU for the same article's NER in a child (docs/benchmarks.md).
Loading the model takes about 0.6 s: it is loaded once per process, when the first step that uses it is
built (so at start-up or ``--check``, never inside a request), and shared by every step.

The codes are the model's: ISO 639-1 where the language has one (``en``, ``fr``, ``de``), ISO 639-3
otherwise (``arz``, ``pcm``), which is the shape :func:`pipedingest.article.language_code` keeps.
"""
from __future__ import annotations

from typing import Any, Optional

from twisted.plugin import IPlugin
from zope.interface import provider

from pipedingest.config.errors import ConfigError, close_matches_hint
from pipedingest.engine.baton import get_path, set_path
from pipedingest.engine.processor import IProcessor, Option, Processor

#: What the model answers for text with no linguistic content (digits, symbols).
NO_LANGUAGE = "zxx"

_identifiers: dict[Optional[frozenset], Any] = {}


def identifier(languages: Optional[frozenset] = None):
    """The process's py3langid identifier, restricted to *languages* (None: all of them).

    The model is read once; a restricted identifier shares its arrays (``set_languages`` on a copy
    keeps only the chosen columns), so steps with different ``languages`` do not disturb each other.
    """
    if languages in _identifiers:
        return _identifiers[languages]
    if None not in _identifiers:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _identifiers[None] = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if languages is not None:
        full = _identifiers[None]  # never restricted itself: its arrays are the whole model's
        restricted = type(full)(full.nb_ptc, full.nb_pc, full.nb_classes, full.tk_nextmove, full.tk_output,
                                norm_probs=True, tk_row=full.tk_row)
        restricted.set_languages(sorted(languages))
        _identifiers[languages] = restricted
    return _identifiers[languages]


def detect(text: str, languages: Optional[frozenset] = None) -> tuple[Optional[str], float]:
    """``(code, confidence)`` of *text*; the code is None when no language stands out.

    No language stands out when the model finds no linguistic content, or when the best two are tied,
    which is what it answers for text too short to hold any of its features ("OK", "Paris").
    """
    ranked = identifier(languages).rank(text)
    (best, confidence), runner_up = ranked[0], ranked[1][1] if len(ranked) > 1 else 0.0
    if best == NO_LANGUAGE or confidence <= runner_up:
        return None, confidence
    return best, confidence


def sample(article: dict, max_chars: Optional[int]) -> str:
    """What detection reads: the title, then the body, cut at *max_chars* (None: all of it)."""
    text = "\n\n".join(article[key] for key in ("title", "body") if article.get(key))
    return text if max_chars is None else text[:max_chars]


@provider(IPlugin, IProcessor)
class DetectLanguage(Processor):
    """Fill in ``language`` (and ``language_confidence``, 0 to 1) of an article that states no language.

    A language the client stated is kept as it is, and no confidence is added. Below
    ``min_confidence`` (or when no language stands out) the language stays unset, so that a ``route``
    on it takes its default, and the confidence is recorded all the same.
    """

    name = "detect-language"
    options = {
        "input_path": Option(str, "article", "where the article is"),
        "languages": Option((list, type(None)), None, "the only languages to choose from (null: all the model's)",
                            items=str),
        "max_chars": Option((int, type(None)), 2000, "read the title and body up to this many characters "
                            "(null: all of it)", minimum=1),
        "min_confidence": Option(float, 0.0, "below this confidence the language is left unset", minimum=0,
                                 maximum=1),
    }

    def __init__(self, config, step):
        super().__init__(config, step)
        self.languages = frozenset(config["languages"]) if config["languages"] is not None else None
        known = identifier().labels
        unknown = sorted(set(self.languages or ()) - set(known))
        if unknown:
            hint = close_matches_hint(unknown[0], known) if len(unknown) == 1 else ""
            raise ConfigError(f"detect-language does not know the language(s) {', '.join(unknown)}",
                              hint if hint.startswith("did you mean") else "codes such as 'en', 'fr', 'de' (ISO 639-1)",
                              key="languages")
        if self.languages is not None and len(self.languages) < 2:
            raise ConfigError("detect-language needs at least two languages to choose from",
                              "list two or more, or leave 'languages' out to use all the model knows",
                              key="languages")
        identifier(self.languages)

    def process(self, baton):
        path = self.config["input_path"]
        article = get_path(baton, path)
        if not isinstance(article, dict):
            raise TypeError(f"detect-language needs an article (a mapping) at {path!r}, not {type(article).__name__}")
        if article.get("language"):
            return baton
        code, confidence = detect(sample(article, self.config["max_chars"]), self.languages)
        detected = {**article, "language_confidence": round(confidence, 3)}
        detected.pop("language", None)
        if code is not None and confidence >= self.config["min_confidence"]:
            detected["language"] = code
        return set_path(baton, path, detected)
