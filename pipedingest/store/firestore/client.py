"""Google's Firestore client: creating it, and what its errors mean.

**Project, database and credentials.**  A client talks to one database of one
project: ``database`` names it (``(default)``, or a named database).  With
``FIRESTORE_EMULATOR_HOST`` set the credentials are anonymous.  Off the emulator
they are Google's Application Default Credentials (``google.auth.default()``:
``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, or
the service account of the machine), and the project, unless given, is theirs
(``GOOGLE_CLOUD_PROJECT`` first).  Finding credentials may block: call
:func:`create_client` on a thread, never the reactor's.

Credentials that cannot be had, or that Firestore refuses, are recognised by
:func:`access_problem`: google-auth's errors (no credentials found, no access
token: the latter reaches the client inside gRPC's UNAVAILABLE, recognisable only
by its text), 401 and 403.  Its text names the credentials and what to do, since
that is what an operator reads.

The store (``store.py``) and the read-only walk of ``ingest-reextract``
(``store/walk.py``) both create their client here.
"""
from __future__ import annotations

import os

import google.auth
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from pipedingest.store.base import StoreError

#: The database a store uses unless told otherwise.
DEFAULT_DATABASE = "(default)"
#: What Firestore accepts as a database id: ``(default)``, or 4 to 63 lowercase letters,
#: digits and hyphens, starting with a letter and not ending with a hyphen.
DATABASE_ID = r"\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9]"
#: How gRPC reports credentials that failed to give a token (google-auth's RefreshError or
#: TransportError, raised inside the call): an UNAVAILABLE with this text.
_TOKEN_FAILED = "Getting metadata from plugin failed"

_TRANSIENT = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.Aborted,
    api_exceptions.ResourceExhausted,
    api_exceptions.InternalServerError,
)


def on_emulator() -> bool:
    """Is ``FIRESTORE_EMULATOR_HOST`` set (anonymous credentials, the project as given)?"""
    return bool(os.environ.get("FIRESTORE_EMULATOR_HOST"))


def create_client(project: str | None, database: str = DEFAULT_DATABASE):
    """A ``google.cloud.firestore.Client`` for *database* of *project* (None: the credentials' project).

    Blocks while google-auth looks for credentials.  Raises google-auth's
    ``DefaultCredentialsError`` when there are none, and :class:`StoreError` when no
    project can be named.
    """
    if on_emulator():
        credentials = AnonymousCredentials()
    else:
        credentials, found = google.auth.default(scopes=firestore.Client.SCOPE)
        project = project or found
        if not project:
            raise StoreError("no Google Cloud project for Firestore: 'project' is not set, "
                             "GOOGLE_CLOUD_PROJECT is not set, and the Application Default "
                             "Credentials name none")
    return firestore.Client(project=project, credentials=credentials, database=database)


def is_transient(error: BaseException) -> bool:
    """Worth retrying unchanged?  A request over the server's size cap is not, though
    it arrives as RESOURCE_EXHAUSTED: splitting the batch is what helps."""
    if isinstance(error, api_exceptions.ResourceExhausted) and "exceeds maximum size" in str(error):
        return False
    return isinstance(error, _TRANSIENT)


def access_problem(error: BaseException, project: str | None, database: str) -> str | None:
    """What *error* says is wrong with the store's credentials or their rights, or None.

    The text names the credentials and what to do, since that is what an operator
    reads in the 503 and in ``/ready``.  None: the error is about something else.
    """
    if isinstance(error, auth_exceptions.DefaultCredentialsError):
        return (f"no usable Google credentials ({describe(error)}); set GOOGLE_APPLICATION_CREDENTIALS to a "
                "service account key file, run `gcloud auth application-default login`, or run with a "
                "service account attached")
    if isinstance(error, auth_exceptions.GoogleAuthError) or (
            isinstance(error, api_exceptions.ServiceUnavailable) and _TOKEN_FAILED in str(error)):
        return f"the Google credentials could not get an access token ({describe(error)})"
    if isinstance(error, api_exceptions.Unauthenticated):
        return f"Firestore did not accept the Google credentials ({describe(error)})"
    if isinstance(error, api_exceptions.PermissionDenied):
        return (f"the Google credentials may not use Firestore database {database} of project {project} "
                f"({describe(error)}); grant their account roles/datastore.user, and check that the "
                "Firestore API is enabled")
    return None


def describe(error: BaseException) -> str:
    """``Type: the first line of the message`` (at most 300 characters of it)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:300]}"
