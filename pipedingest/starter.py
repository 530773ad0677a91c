"""``ingest-init DIR``: write a starting set of configurations into a folder of the operator's choice.

An installed pipedingest has no clone to take its configurations from, so the shipped ones travel in the
package (``pipedingest/conf``, and ``pipedingest/deploy`` for supervisord, systemd and containers) and this
command copies them out: the operator then edits their own copies, and an upgrade of the package never
changes a running daemon's configuration behind its back.

It never overwrites anything: when any file it would write already exists, it writes nothing and names
them. Besides the copies it writes ``ingest.env``, the environment file that the supervisors' programs
read (``INGEST_TOKEN`` and friends), with a fresh random token, readable by its owner only.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Iterator

#: Exit statuses, as ``--help`` and the README tell them.
EXIT_OK, EXIT_EXISTS, EXIT_USAGE = 0, 1, 2

#: What is copied: the shipped configurations (not their examples/), and the supervisors' files.
SOURCES = (("conf", ""), ("deploy", "deploy"))
SUFFIXES = (".yaml", ".json", ".conf", ".service", ".socket", "Dockerfile", ".env.example", "with-env")

ENVIRONMENT = """\
# The environment of the pipedingest daemons: KEY=VALUE lines, no quotes, no spaces around '='.
# Read by systemd (EnvironmentFile=) and by deploy/with-env (supervisord); variables of the configurations
# are in the README's table "Environment variables".
INGEST_TOKEN={token}
# INGEST_PORT=8080
# INGEST_INTERFACE=127.0.0.1
# INGEST_DATA=/var/lib/pipedingest
# GOOGLE_CLOUD_PROJECT=my-project
# FIRESTORE_DATABASE=(default)
# REDIS_URL=redis://127.0.0.1:6379/0
"""


class InitError(Exception):
    """Nothing was written, for the reason given."""


class FilesExist(InitError):
    """Some of the files to write are already there: nothing was written."""


def shipped_files() -> Iterator[tuple[str, Traversable]]:
    """(path relative to the target folder, packaged file) for every file ``ingest-init`` copies."""
    package = files("pipedingest")
    for source, target in SOURCES:
        folder = package / source
        if not folder.is_dir():
            raise InitError(f"this installation of pipedingest carries no {source}/ folder ({folder}): "
                            f"reinstall it from a wheel or sdist built with its package data")
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
            if entry.is_file() and entry.name.endswith(SUFFIXES):
                yield os.path.join(target, entry.name), entry


def write_starting_set(folder: str, token: str) -> list[str]:
    """Copy the shipped files and write ``ingest.env`` into *folder*; the paths written, in order.

    Everything is checked before the first file is written, so a refusal leaves the folder as it was.
    """
    plan = [(os.path.join(folder, relative), entry.read_bytes()) for relative, entry in shipped_files()]
    plan.append((os.path.join(folder, "ingest.env"), ENVIRONMENT.format(token=token).encode()))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InitError(f"{folder} exists and is not a folder")
    existing = [path for path, _ in plan if os.path.lexists(path)]
    if existing:
        raise FilesExist(f"{len(existing)} of the files to write already exist, so nothing was written "
                        f"(ingest-init never overwrites): {', '.join(existing)}")
    written = []
    for path, content in plan:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = 0o600 if path.endswith("ingest.env") else 0o755 if content.startswith(b"#!") else 0o644
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(content)
        written.append(path)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="ingest-init",
        description="Write pipedingest's shipped configurations (dev, prod, front, worker, streams, articles), "
                    "the supervisord, systemd and container files (deploy/) and an environment file with a new "
                    "INGEST_TOKEN (ingest.env, mode 600) into DIR, which is created if needed. Nothing is ever "
                    "overwritten: if any of those files exists, nothing is written.",
        epilog="exit status:\n  0  written\n  1  some files already exist: nothing was written\n"
               "  2  a usage error, or the folder cannot be written",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", metavar="DIR", help="where to write (e.g. /etc/pipedingest)")
    parser.add_argument("--token", help="the INGEST_TOKEN to write into ingest.env (default: 32 random bytes, "
                                        "URL-safe base64)")
    args = parser.parse_args(argv)
    token = args.token if args.token is not None else secrets.token_urlsafe(32)
    if not token or any(character.isspace() or character in "'\"\\$#" for character in token):
        parser.error("--token must be non-empty, without spaces, quotes, backslashes, '$' or '#'")
    try:
        written = write_starting_set(args.folder, token)
    except InitError as error:
        print(f"ingest-init: {error}", file=sys.stderr)
        sys.exit(EXIT_EXISTS if isinstance(error, FilesExist) else EXIT_USAGE)
    except OSError as error:
        print(f"ingest-init: cannot write into {args.folder}: {error.strerror or error}"
              f"{f' ({error.filename})' if error.filename else ''}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    for path in written:
        print(path)
    dev = os.path.join(args.folder, "dev.yaml")
    print(f"\nnext: twistd -n --pidfile= ingest -c {dev} --self-test    (then without --self-test; "
          f"see the README, 'Deploying')", file=sys.stderr)
