"""What a processor is: a small class with a name, declared options and ``process``.

Options are the processor's YAML keys.  They are declared on the class as
:class:`Option` objects and checked when the configuration loads (type, required,
unknown keys with close matches), so a processor never has to guess what went
wrong from a ``TypeError``.

A processor is found by :mod:`twisted.plugin`: the class itself provides
:class:`IProcessor` (``@provider(IPlugin, IProcessor)``) and lives in a plugin package.
"""
from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from pipedingest.config.schema import Option, check_options
from pipedingest.engine.baton import get_path, set_path

SAME_AS_INPUT = object()

#: Returned by a processor to end its pipeline early, successfully.
STOP = object()


class IProcessor(Interface):
    """A processor class that pipelines can name in YAML."""

    name = Attribute("The name used in YAML, such as 'eval-lambda'.")
    options = Attribute("A dict of option name → Option.")


class Processor:
    """Base class for processors.

    Subclasses set :attr:`name` and :attr:`options`, and implement
    :meth:`process`.  ``__init__`` receives the checked option values (defaults
    filled in) and a :class:`~pipedingest.engine.runtime.StepContext` for
    resolving references; it raises :class:`ConfigError` (with ``key=``) for
    problems only it can see, such as a lambda that does not compile.
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, config: dict, step) -> None:
        self.config = config
        self.step = step

    def process(self, baton: Any) -> Any:
        """Return the (possibly new) baton, :data:`STOP`, or a Deferred of either."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} at {self.step.where}>"


class InputOutputProcessor(Processor):
    """A processor that maps a value at ``input_path`` to a value at ``output_path``.

    ``output_path`` defaults to ``input_path``; ``null`` discards the result.
    """

    options: ClassVar[dict[str, Option]] = {
        "input_path": Option(str, "", "where in the baton to read the input ('' is the whole baton)"),
        "output_path": Option((str, type(None)), SAME_AS_INPUT,
                              "where to write the result (defaults to input_path; null discards it)"),
    }

    def __init__(self, config: dict, step) -> None:
        super().__init__(config, step)
        self.input_path = config["input_path"]
        output = config["output_path"]
        self.output_path = self.input_path if output is SAME_AS_INPUT else output

    def process(self, baton: Any) -> Any:
        value = get_path(baton, self.input_path)
        result = self.process_input(value, baton)
        if isinstance(result, Deferred):
            return result.addCallback(self._store, baton)
        return self._store(result, baton)

    def _store(self, result: Any, baton: Any) -> Any:
        if result is STOP:
            return STOP
        if self.output_path is None:
            return baton
        return set_path(baton, self.output_path, result)

    def process_input(self, value: Any, baton: Any) -> Any:
        raise NotImplementedError


def all_options(cls) -> dict[str, Option]:
    """The options of *cls*, including those declared by its base classes."""
    merged: dict[str, Option] = {}
    for klass in reversed(cls.__mro__):
        merged.update(getattr(klass, "options", {}) or {})
    return merged


def check_processor_options(cls, given: dict):
    """Fill in defaults and check *given* against the options *cls* declares."""
    return check_options(all_options(cls), given, f"processor {cls.name!r}")
