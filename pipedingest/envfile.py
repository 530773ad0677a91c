"""``twistd ingest --env-file FILE``: the daemon's environment from a file, as systemd's ``EnvironmentFile=`` reads it.

systemd reads ``/etc/pipedingest/ingest.env`` itself; supervisord has no such option, and a shell wrapper
around twistd would have to ``exec`` it for the supervisor's signals to reach the daemon. So the daemon reads
the file itself, before its configuration is loaded (``${INGEST_TOKEN}`` and friends are expanded then) and
before the Firestore or Redis clients look at the environment.

The format is the one both understand: ``KEY=VALUE`` lines, ``#`` comments and blank lines, an optional
``export``, a value optionally in matching single or double quotes. A variable already in the environment
wins over the file, so that a supervisor's per-program ``environment=`` (``INGEST_NODE=worker-1``) refines
the shared file. Mistakes are configuration errors with their ``file:line``; nothing is started.
"""
from __future__ import annotations

import os
import re
from typing import MutableMapping

from pipedingest.config.errors import ConfigError, ConfigErrors, Location

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def read_env_file(path: str) -> dict[str, str]:
    """The variables *path* sets, in order; ConfigErrors naming every bad line."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigErrors([ConfigError(f"cannot read the environment file: {reason}",
                                        "pass a readable KEY=VALUE file with --env-file", Location(path))]) from None
    found: dict[str, str] = {}
    errors = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export "):].lstrip()
        name, equals, value = text.partition("=")
        name, value = name.strip(), value.strip()
        where = Location(path, number, 1)
        if not equals or not _NAME.match(name):
            # The line is not echoed: it may hold a secret that lost its name.
            message = f"{name[:40]!r} is not a variable name" if equals else "not a KEY=VALUE line (no '=')"
            errors.append(ConfigError(message, "a variable name, '=', and its value", where))
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif value[:1] in ("'", '"'):
            errors.append(ConfigError(f"the value of {name} opens a quote it does not close", "", where))
            continue
        found[name] = value
    if errors:
        raise ConfigErrors(errors)
    return found


def apply_env_file(path: str, environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Set the variables of *path* that *environ* does not already have; the names set."""
    variables = read_env_file(path)
    added = [name for name in variables if name not in environ]
    for name in added:
        environ[name] = variables[name]
    return added
