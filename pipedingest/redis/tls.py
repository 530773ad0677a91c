"""TLS to a managed Redis (``rediss://``), and finding out why a connection does not work.

A managed Redis (GCP Memorystore, AWS ElastiCache) speaks TLS, often with a private CA, sometimes asks for a
client certificate, and usually for an ACL user (``AUTH user password``). The files are checked when the
configuration loads (:func:`check_files`), so a missing or unreadable CA is a configuration error with its
line, not a connection that never comes; :func:`client_options` builds the TLS options every connection uses:
the server's certificate checked against the CA (the system's trust store without one) and the server's name
checked against the certificate.

txredisapi reconnects by itself but keeps the reason of a failed attempt to itself (a refused handshake, a
WRONGPASS), and after a failed AUTH stops trying altogether. :func:`diagnose` opens one connection of its own,
as the client would, and says what happened: ``/ready`` then names the cause instead of a time-out.
"""
from __future__ import annotations

import re
from typing import Optional

from twisted.internet import ssl
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _read(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def _certificates(path: str) -> list:
    blocks = _PEM_CERTIFICATE.findall(_read(path))
    if not blocks:
        raise ValueError("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return [ssl.Certificate.loadPEM(block) for block in blocks]


def _client_certificate(cert_file: str, key_file: str):
    certificate = _certificates(cert_file)[0]
    try:
        key = ssl.KeyPair.load(_read(key_file), ssl.FILETYPE_PEM)
    except Exception as error:  # pyOpenSSL raises its own Error with a list of OpenSSL reasons
        raise ValueError(f"{key_file} is not an unencrypted PEM private key ({error})") from None
    try:
        return ssl.PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
    except Exception as error:
        raise ValueError(f"{key_file} is not the key of {cert_file} ({error})") from None


def check_files(ca_file: Optional[str], cert_file: Optional[str], key_file: Optional[str]) -> list[tuple[str, str]]:
    """``(option, problem)`` for every file that cannot be used; empty when all can."""
    problems = []
    if (cert_file is None) != (key_file is None):
        problems.append(("cert_file" if cert_file is None else "key_file",
                         "cert_file and key_file go together (a client certificate and its key)"))
    for option, path in (("ca_file", ca_file), ("cert_file", cert_file)):
        if path is None:
            continue
        try:
            _certificates(path)
        except OSError as error:
            problems.append((option, f"cannot read {path}: {error.strerror}"))
        except Exception as error:
            problems.append((option, f"{path} {error}" if isinstance(error, ValueError) else
                             f"{path} is not a PEM certificate ({error})"))
    if cert_file and key_file and not problems:
        try:
            _client_certificate(cert_file, key_file)
        except OSError as error:
            problems.append(("key_file", f"cannot read {key_file}: {error.strerror}"))
        except ValueError as error:
            problems.append(("key_file", str(error)))
    return problems


def client_options(server_name: str, ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                   key_file: Optional[str] = None):
    """The TLS options of every connection to the server named *server_name* (files already checked)."""
    trust = ssl.trustRootFromCertificates(_certificates(ca_file)) if ca_file else ssl.platformTrust()
    client = _client_certificate(cert_file, key_file) if cert_file and key_file else None
    return ssl.optionsForClientTLS(server_name, trustRoot=trust, clientCertificate=client)


@implementer(IHandshakeListener)
class _Probe(Protocol):
    """Sends AUTH (when there is a password) and PING; keeps the first reply line; knows whether a TLS
    handshake completed (a plain server never answers a ClientHello: it waits for the end of a line)."""

    handshaken = False

    def __init__(self, commands: list[tuple[str, ...]], answered: Deferred):
        self.commands = commands
        self.answered = answered
        self.buffer = b""

    def handshakeCompleted(self):
        self.handshaken = True

    def connectionMade(self):
        request = b""
        for command in self.commands:
            request += b"*%d\r\n" % len(command)
            for part in command:
                data = part.encode("utf-8")
                request += b"$%d\r\n%s\r\n" % (len(data), data)
        self.transport.write(request)

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n" in self.buffer and not self.answered.called:
            self.answered.callback(self.buffer.split(b"\r\n", 1)[0].decode("utf-8", "replace"))
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.answered.called:
            self.answered.errback(reason)


def diagnose(reactor, host: str, port: int, tls_options, username: Optional[str], password: Optional[str],
             timeout: float) -> Deferred:
    """Fires with what one fresh connection finds: ``"answers"`` or why not (never fails)."""
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls_options is not None:
        endpoint = wrapClientTLS(tls_options, endpoint)
    commands = []
    if password is not None:
        commands.append(("AUTH", username, password) if username else ("AUTH", password))
    commands.append(("PING",))
    answered = Deferred()
    probes = []

    def probe():
        probes.append(_Probe(commands, answered))
        return probes[-1]

    connecting = endpoint.connect(Factory.forProtocol(probe))
    connecting.addErrback(lambda failure: answered.called or answered.errback(failure))

    def first_line(line: str) -> str:
        if line.startswith("-"):
            kind = line[1:].split(" ", 1)[0]
            if kind in ("WRONGPASS", "NOAUTH", "NOPERM") or "AUTH" in line:
                return f"authentication failed ({line[1:]})"
            return f"Redis answered an error ({line[1:]})"
        return "answers"

    def failed(failure) -> str:
        text = failure.getErrorMessage()
        if failure.check(DeferredTimeout):
            if tls_options is not None and probes and not probes[-1].handshaken:
                return f"TLS handshake failed (no answer within {timeout + 1:g}s: is the port a TLS one?)"
            return f"no answer within {timeout + 1:g}s"
        if "VerificationError" in repr(failure.value):
            return f"TLS handshake failed (the certificate is not for the expected name: {text})"
        if tls_options is not None and ("SSL" in repr(failure.value) or "certificate" in text or "TLS" in text):
            return f"TLS handshake failed ({text})"
        if tls_options is not None and not text.strip("[]'\" "):
            return "TLS handshake failed (the connection was closed)"
        return f"cannot connect ({text})"

    def close(result):
        """Leave nothing open: a probe that timed out would otherwise hold its connection."""
        if not connecting.called:
            connecting.cancel()
        for each in probes:
            if each.transport is not None and each.connected:
                each.transport.abortConnection()
        return result

    answered.addTimeout(timeout + 1, reactor)
    return answered.addBoth(close).addCallbacks(first_line, failed)
