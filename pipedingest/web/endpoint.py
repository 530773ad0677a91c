"""What a site listens on: a Twisted server endpoint string, checked at load, and how to reach it again.

``web.<site>.endpoint`` takes the strings of
:func:`twisted.internet.endpoints.serverFromString`, four kinds of them::

    tcp:8080:interface=127.0.0.1
    ssl:8443:privateKey=key.pem:certKey=cert.pem:interface=127.0.0.1
    unix:/run/pipedingest/ingest.sock:mode=660
    systemd:domain=INET:index=0          (a socket passed by systemd: LISTEN_FDS, LISTEN_PID)

``port``/``interface`` are the short form of ``tcp:PORT:interface=IF``.  Everything that can be checked
before a port is bound is checked at load, each problem with its file and line: the kind, the port, the
interface, the TLS key and certificate (present, readable, PEM, matching), the UNIX socket's folder, the
systemd options.  Twisted builds the endpoint itself only when the site starts (a ``systemd:`` one reads
``LISTEN_FDS`` then, which ``--check`` does not have).

**Host checking** (:mod:`pipedingest.web.access`) follows where the endpoint can be reached from: tcp and
ssl on a loopback interface, and a UNIX socket (only this machine's processes can connect to it), serve
loopback ``Host`` names unless ``allowed_hosts`` says otherwise; a ``systemd:`` socket is bound by someone
else, to an address this configuration does not know, so such a site must list its ``allowed_hosts``.

**Reaching it again**: the daemon's status tests talk HTTP to its own site.  Once listening, its URL is
read from the bound address (``http://``, ``https://``, or ``http+unix://<quoted path>`` for a UNIX socket,
the spelling of requests-unixsocket); :meth:`Listener.agent` gives an HTTP client for it: over the UNIX
socket, or over TLS trusting the certificates of the site's certificate file and checking the name they
carry (so a self-signed certificate works, and a CA-issued one whose file holds its chain up to the root).
"""
from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, unquote

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import UNIXClientEndpoint, serverFromString
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from pipedingest.web.access import is_loopback

KINDS = ("tcp", "ssl", "unix", "systemd")
_KEYWORDS = {
    "tcp": {"interface", "backlog"},
    "ssl": {"privateKey", "certKey", "extraCertChain", "dhParameters", "sslmethod", "interface", "backlog"},
    "unix": {"mode", "backlog", "lockfile"},
    "systemd": {"domain", "index", "name"},
}
_EXAMPLES = ("tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem:certKey=cert.pem, "
             "unix:/run/pipedingest/ingest.sock, systemd:domain=INET:index=0")
UNIX_SCHEME = "http+unix://"


class EndpointError(ValueError):
    """An endpoint string that cannot be listened on; its message says why, its hint what to write."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Listener:
    """One site's endpoint, checked: its string, its kind, and whether it is reachable only from this machine."""

    description: str
    kind: str
    #: True: only this machine can reach it (a loopback interface, a UNIX socket); None: unknown (systemd).
    loopback: Optional[bool]
    #: ssl: the certificate file (the status tests trust the certificates in it).
    certificate: Optional[str] = None

    @classmethod
    def tcp(cls, port: int, interface: str) -> "Listener":
        """The short form, ``port`` and ``interface``."""
        return cls(f"tcp:{port}:interface={_escape(interface)}", "tcp", is_loopback(interface))

    @property
    def shown(self) -> str:
        """For the service graph: ``127.0.0.1:8080`` for tcp, the endpoint string otherwise."""
        if self.kind != "tcp":
            return self.description
        from twisted.internet.endpoints import _parse

        args, kw = _parse(self.description)
        return f"{kw.get('interface') or '0.0.0.0'}:{args[1]}"

    def endpoint(self, reactor):
        """Twisted's server endpoint (reads the TLS files, or takes systemd's socket, now)."""
        try:
            return serverFromString(reactor, self.description)
        except (IndexError, KeyError) as error:
            if self.kind != "systemd":
                raise
            # Twisted's ListenFDs: LISTEN_PID must be this process, LISTEN_FDS and LISTEN_FDNAMES agree.
            raise EndpointError(f"no socket passed by systemd for {self.description!r} ({error!r}): start it from "
                                "its .socket unit (LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES)") from None

    def agent(self, reactor, pool, address) -> Agent:
        """An HTTP client for this site, bound at *address*: over its UNIX socket, or trusting its certificate."""
        if isinstance(address, UNIXAddress):
            return Agent.usingEndpointFactory(reactor, _UnixSocket(reactor, _path(address)), pool=pool)
        if self.certificate is not None:
            return Agent(reactor, contextFactory=_TrustCertificateFile(self.certificate), pool=pool)
        return Agent(reactor, pool=pool)

    def url(self, address) -> str:
        """The URL the site answers at, from its bound address (an unspecified address is reached on loopback)."""
        if isinstance(address, UNIXAddress):
            return UNIX_SCHEME + quote(_path(address), safe="")
        host = address.host
        if isinstance(address, IPv6Address):
            host = f"[{'::1' if host == '::' else host}]"
        elif isinstance(address, IPv4Address) and host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        return f"{'https' if self.certificate is not None else 'http'}://{host}:{address.port}"


def parse_listener(description: str) -> Listener:
    """Check an endpoint string as far as can be without binding; raises :class:`EndpointError`."""
    # Twisted's own tokenizer (backslash escapes, keyword=value), so that what is checked is what it will read.
    from twisted.internet.endpoints import _parse

    if not isinstance(description, str) or not description.strip():
        raise EndpointError("the endpoint is empty", "for example: " + _EXAMPLES)
    try:
        args, kw = _parse(description)
    except Exception as error:  # an unfinished escape, say
        raise EndpointError(f"endpoint {description!r} cannot be parsed ({error})", "for example: " + _EXAMPLES)
    kind, args = args[0], args[1:]
    if kind not in KINDS:
        raise EndpointError(f"unknown endpoint type {kind!r} in {description!r}",
                            "use one of " + ", ".join(KINDS) + ": " + _EXAMPLES)
    unknown = sorted(set(kw) - _KEYWORDS[kind])
    if unknown:
        raise EndpointError(f"a {kind} endpoint takes no {', '.join(unknown)}",
                            f"it takes: {', '.join(sorted(_KEYWORDS[kind]))}")
    if "backlog" in kw:
        _number(kw["backlog"], "backlog", 1, None)
    if kind in ("tcp", "ssl"):
        if len(args) != 1:
            raise EndpointError(f"a {kind} endpoint takes one port, not {args!r}",
                                f"for example {kind}:8080:interface=127.0.0.1")
        _number(args[0], "port", 0, 65535)
        interface = kw.get("interface", "")
        if interface not in ("", "localhost"):
            try:
                ipaddress.ip_address(interface)
            except ValueError:
                raise EndpointError(f"interface {interface!r} is not an IP address",
                                    "use 127.0.0.1 (this machine only) or 0.0.0.0 (every IPv4 address)") from None
        if kind == "tcp":
            return Listener(description, kind, is_loopback(interface))
        return Listener(description, kind, is_loopback(interface), _check_tls(kw))
    if kind == "unix":
        if len(args) != 1 or not args[0]:
            raise EndpointError("a unix endpoint takes one socket path",
                                "for example unix:/run/pipedingest/ingest.sock")
        _check_socket_path(args[0])
        if "mode" in kw:
            try:
                int(kw["mode"], 8)
            except ValueError:
                raise EndpointError(f"mode {kw['mode']!r} is not an octal file mode", "for example mode=660") from None
        if "lockfile" in kw and kw["lockfile"] not in ("0", "1"):
            raise EndpointError(f"lockfile must be 0 or 1, not {kw['lockfile']!r}")
        return Listener(description, kind, True)
    # systemd
    if args:
        raise EndpointError(f"a systemd endpoint takes keywords only, not {args!r}", "systemd:domain=INET:index=0")
    if kw.get("domain") not in ("INET", "INET6", "UNIX"):
        raise EndpointError(f"a systemd endpoint needs domain=INET, INET6 or UNIX, not {kw.get('domain')!r}",
                            "systemd:domain=INET:index=0")
    if ("index" in kw) == ("name" in kw):
        raise EndpointError("a systemd endpoint takes exactly one of index= and name=",
                            "index=0 (the first socket passed), or name= the socket unit's FileDescriptorName")
    if "index" in kw:
        _number(kw["index"], "index", 0, None)
    return Listener(description, kind, None)


def _number(text: str, what: str, low: int, high: Optional[int]) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        span = f"{low} to {high}" if high is not None else f"{low} or more"
        raise EndpointError(f"{what} {text!r} is not a number from {span}")
    return value


def _readable(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise EndpointError(f"the {what} file {path!r} cannot be read: {error.strerror}",
                            "a relative path is relative to the daemon's working folder") from None


def _check_tls(kw: dict) -> str:
    """The key and certificate: present, readable, PEM, and matching; the certificate file's path."""
    from OpenSSL import SSL, crypto

    if "privateKey" not in kw:
        raise EndpointError("an ssl endpoint needs privateKey= (and certKey=, unless the key file holds both)",
                            "ssl:8443:privateKey=key.pem:certKey=cert.pem")
    key_path = kw["privateKey"]
    cert_path = kw.get("certKey", key_path)
    key_pem, cert_pem = _readable(key_path, "private key"), _readable(cert_path, "certificate")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise EndpointError(f"the private key file {key_path!r} holds no PEM private key (or it is encrypted)",
                            "-----BEGIN PRIVATE KEY-----, unencrypted: the daemon starts without a person") from None
    try:
        certificate = crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem)
    except crypto.Error:
        raise EndpointError(f"the certificate file {cert_path!r} holds no PEM certificate",
                            "-----BEGIN CERTIFICATE-----") from None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(certificate)
    try:
        context.use_privatekey(key)  # OpenSSL compares them here (key values mismatch) ...
        context.check_privatekey()  # ... and here
    except SSL.Error:
        raise EndpointError(f"the private key {key_path!r} does not match the certificate {cert_path!r}") from None
    for option, what in (("extraCertChain", "certificate chain"), ("dhParameters", "DH parameters")):
        if option in kw:
            _readable(kw[option], what)
    if "sslmethod" in kw and not hasattr(SSL, kw["sslmethod"]):
        raise EndpointError(f"sslmethod {kw['sslmethod']!r} is not an OpenSSL method", "leave it out: TLS_METHOD")
    return cert_path


def _check_socket_path(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EndpointError(f"the folder of the UNIX socket {path!r} does not exist",
                            f"create {folder} (systemd: RuntimeDirectory=), or choose another path")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise EndpointError(f"{path!r} exists and is not a UNIX socket", "choose a path where nothing is")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _path(address: UNIXAddress) -> str:
    name = address.name
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


def unix_path(url: str) -> Optional[str]:
    """The socket path of an ``http+unix://`` URL, or None."""
    return unquote(url[len(UNIX_SCHEME):].split("/", 1)[0]) if url.startswith(UNIX_SCHEME) else None


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    """Every request goes over one UNIX socket, whatever the URL's host (``http://localhost/...``)."""

    def __init__(self, reactor, path: str):
        self.reactor, self.path = reactor, path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self.reactor, self.path)


@implementer(IPolicyForHTTPS)
class _TrustCertificateFile:
    """TLS to the daemon's own site: trust the certificates in its certificate file, check the name they carry.

    The client connects to a loopback address, where a certificate for ``ingest.example.com`` would not
    match: it checks the certificate's own name (its first DNS name, else its common name) instead.
    """

    def __init__(self, path: str):
        from cryptography import x509
        from twisted.internet.ssl import Certificate, trustRootFromCertificates

        with open(path, "rb") as stream:
            pem = stream.read()
        certificates = x509.load_pem_x509_certificates(pem)
        self.trust = trustRootFromCertificates([Certificate.loadPEM(c.public_bytes(_pem_encoding()))
                                                for c in certificates])
        self.name = _certificate_name(certificates[0])

    def creatorForNetloc(self, hostname, port):
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(self.name, trustRoot=self.trust)


def _pem_encoding():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def _certificate_name(certificate) -> str:
    from cryptography import x509

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
        addresses = names.get_values_for_type(x509.IPAddress)
        if addresses:
            return str(addresses[0])
    except x509.ExtensionNotFound:
        pass
    common = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return common[0].value if common else "localhost"
