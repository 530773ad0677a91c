"""Who may ask a site: the Host names it answers to, and the bearer tokens it requires.

Two protections for a daemon that stores what it is sent:

* **Host names.** A site bound to a loopback address (or a UNIX socket) answers only requests whose
  ``Host`` is a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, any port),
  unless ``allowed_hosts`` names others (``["*"]``: any).  A web page cannot then
  reach the daemon through DNS rebinding (a hostile name resolving to 127.0.0.1).
  Other requests get 421.
* **Tokens.** With ``tokens`` set, every request but ``/health`` and ``/ready``
  needs ``Authorization: Bearer <one of them>``, compared in constant time;
  others get 401 with ``WWW-Authenticate``.
"""
from __future__ import annotations

import hmac
import ipaddress
from typing import Iterable, Optional

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: Paths answered without a token: liveness and readiness probes carry none.
OPEN_ENDPOINTS = frozenset({"health", "ready"})


def is_loopback(interface: str) -> bool:
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port, lower-case (``[::1]:80`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Access:
    """The host names and tokens of one site."""

    def __init__(self, interface: str, tokens: Iterable[str] = (), allowed_hosts: Optional[Iterable[str]] = None,
                 loopback: Optional[bool] = None):
        """*loopback* (default: whether *interface* is a loopback address) says the site is reachable only from
        this machine (a UNIX socket is, too: pipedingest/web/endpoint.py)."""
        self._tokens = [token.encode("utf-8") for token in tokens]
        if allowed_hosts is not None:
            names = {name.lower() for name in allowed_hosts}
            self.allowed_hosts = None if "*" in names else frozenset(names)
        elif is_loopback(interface) if loopback is None else loopback:
            self.allowed_hosts = LOOPBACK_NAMES
        else:
            self.allowed_hosts = None  # bound to a real interface: the operator names hosts if they care

    @property
    def requires_token(self) -> bool:
        return bool(self._tokens)

    def host_refused(self, host: Optional[bytes]) -> Optional[str]:
        """Why a request with this ``Host`` header is not served here, or None."""
        if self.allowed_hosts is None or host is None:
            return None
        name = host_name(host.decode("latin-1"))
        if name in self.allowed_hosts:
            return None
        return f"host {name!r} is not served here"

    def authorized(self, authorization: Optional[bytes]) -> bool:
        """Whether an ``Authorization`` header carries one of the tokens (always, when none are configured)."""
        if not self._tokens:
            return True
        scheme, _, given = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        matches = [hmac.compare_digest(given.strip(), token) for token in self._tokens]
        return any(matches)

    def client_headers(self) -> dict:
        """What the daemon's own client (the status tests) sends to be let in."""
        return {"authorization": "Bearer " + self._tokens[0].decode("utf-8")} if self._tokens else {}
