"""Optional TLS with mutual authentication for the TCP transport, from certificates the user supplies.

Every node has a certificate and private key (PEM files) signed by a CA the user runs, and trusts
exactly that CA (never the system's certificate store). On a TLS connection both ends are
authenticated:

- the listening node requires a client certificate signed by the CA (CERT_REQUIRED);
- the dialling node checks the listening node's certificate against the CA, and checks that it
  names the address the dialler used, as the topology file gives it: an IP address must be one of
  the certificate's IP subject alternative names (SAN), a host name one of its DNS names.

A client certificate is not tied to the address it connects from (nodes dial out from any port,
maybe through NAT): any certificate the CA signed may connect. TLS is a layer under the frames, not
a replacement for their HMAC tags: frames are tagged and checked exactly as without TLS.

A certificate used by a node must allow both uses (extendedKeyUsage serverAuth and clientAuth, or
no extendedKeyUsage at all), since every node both listens and dials. `check_identity` tries the
node's certificate against its own contexts before the node starts, so a certificate that peers
would refuse is reported at once, with what to change.

Session tickets are off: links are long-lived, so resuming sessions would buy nothing.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gossipfl.errors import ConfigError
from gossipfl.net.wire import FrameError

FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")
ID_FIELD = "{id}"  # in a file name: replaced by the node's id (one process hosting several nodes)
_NOT_FAILURES = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)  # the peer just went away
# OpenSSL's words for bytes that are not TLS at all
_NOT_TLS = ("wrong version number", "packet length too long", "http request", "unknown protocol", "record layer")


class TlsRefused(FrameError):
    """A TLS connection was refused: the handshake failed (certificate, protocol, garbage) or stalled."""

    reason = "tls"
    what = "TLS connection refused"


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one node (or, with "{id}" in a name, of every node of a process)."""

    cert: str
    key: str
    ca: str

    def for_node(self, node_id: int) -> TlsFiles:
        """The files of node `node_id`: "{id}" in a name replaced by the id."""
        return TlsFiles(*(name.replace(ID_FIELD, str(node_id)) for name in (self.cert, self.key, self.ca)))

    def flags(self) -> list[str]:
        """The `gossipfl node` flags that name these files."""
        return [FLAGS[0], self.cert, FLAGS[1], self.key, FLAGS[2], self.ca]


@dataclass(frozen=True)
class TlsContexts:
    """A node's two TLS contexts: `server` for the connections it accepts, `client` for those it dials."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    files: TlsFiles


def tls_files(cert: str | Path | None, key: str | Path | None, ca: str | Path | None) -> TlsFiles | None:
    """The three files of `--tls-cert/--tls-key/--tls-ca`; None when none is given.

    Raises:
      ConfigError: when only some are given.
    """
    given = [v is not None for v in (cert, key, ca)]
    if not any(given):
        return None
    if not all(given):
        missing = [flag for flag, g in zip(FLAGS, given, strict=True) if not g]
        raise ConfigError(f"TLS needs all three of {', '.join(FLAGS)}; missing {' and '.join(missing)} (the "
                          "node's certificate, its private key and the CA certificate that signed every node's)")
    return TlsFiles(str(cert), str(key), str(ca))


def _read(flag: str, path: str, marker: str, holds: str) -> None:
    """Checks that `path` can be read and looks like PEM holding `marker`."""
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {flag} file {path!r}: {e.strerror or e}") from None
    if marker.encode() not in text:
        raise ConfigError(f"{flag} file {path!r} holds no PEM {holds} (no '{marker}' line); give the PEM file "
                          f"with the {holds}")


def _refuse_password() -> bytes:
    raise ConfigError("encrypted")


def _load_pair(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    """Loads the node's certificate and key into `ctx`, turning OpenSSL's errors into advice."""
    try:
        ctx.load_cert_chain(files.cert, files.key, password=_refuse_password)
    except ConfigError:
        raise ConfigError(f"--tls-key file {files.key!r} is encrypted; gossipfl needs an unencrypted key "
                          f"(e.g. `openssl pkey -in {files.key} -out node.key`, then keep that file private)") from None
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"the private key in {files.key!r} does not belong to the certificate in "
                              f"{files.cert!r}; pass the key the certificate was made for") from None
        raise ConfigError(f"cannot load the certificate {files.cert!r} with the key {files.key!r} "
                          f"({e.reason or e}); both must be PEM files") from None


def _load_ca(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    try:
        ctx.load_verify_locations(cafile=files.ca)
    except ssl.SSLError as e:
        raise ConfigError(f"cannot load the CA certificate(s) in {files.ca!r} ({e.reason or e}); give the PEM "
                          "certificate of the CA that signed the nodes' certificates") from None


def load_tls(files: TlsFiles) -> TlsContexts:
    """The server and client contexts of one node (see the module docstring).

    Raises:
      ConfigError: for an unreadable or non-PEM file, an encrypted key, or a key that does not
        belong to the certificate.
    """
    _read("--tls-cert", files.cert, "-----BEGIN CERTIFICATE-----", "certificate")
    _read("--tls-key", files.key, "PRIVATE KEY-----", "private key")
    _read("--tls-ca", files.ca, "-----BEGIN CERTIFICATE-----", "CA certificate")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED
    server.num_tickets = 0
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_TICKET
        _load_pair(ctx, files)
        _load_ca(ctx, files)
    return TlsContexts(server=server, client=client, files=files)


def describe(error: ssl.SSLError) -> str:
    """A short text for a TLS error: the certificate check that failed, or the alert or protocol error."""
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verify failed: {error.verify_message.rstrip('.')}"
    text = str(error.reason or error).lower().replace("_", " ")
    if any(words in text for words in _NOT_TLS):
        text += " (not TLS: a node running without TLS, or not a gossipfl node)"
    return text


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS protocol error behind a trio stream error (a certificate refused, an alert, bytes that
    are not TLS); None for an end of stream, a reset, or an error that is not TLS's."""
    seen: BaseException | None = exc
    for _ in range(8):  # __cause__ chains are short; never loop on a cycle
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, _NOT_FAILURES):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def check_identity(tls: TlsContexts, node_id: int, host: str) -> None:
    """Checks, with an in-memory handshake, that node `node_id`'s certificate passes what its peers
    will check: signed by the CA, naming `host` (its address in the topology file), and accepted
    as a client certificate.

    Raises:
      ConfigError: naming the check that failed and what to change.
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    sides = [("dialler", tls.client.wrap_bio(c_in, c_out, server_hostname=host), c_out, s_in),
             ("listener", tls.server.wrap_bio(s_in, s_out, server_side=True), s_out, c_in)]
    done: set[str] = set()
    for _ in range(6):  # a handshake takes two or three flights
        for side, obj, out, peer_in in sides:
            if side not in done:
                try:
                    obj.do_handshake()
                    done.add(side)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as e:
                    raise _identity_error(tls.files, node_id, host, side, e) from None
            peer_in.write(out.read())
        if len(done) == 2:
            return
    raise ConfigError(f"node {node_id}: the TLS self-check of {tls.files.cert!r} did not complete")


def _identity_error(files: TlsFiles, node_id: int, host: str, side: str, e: ssl.SSLError) -> ConfigError:
    what = describe(e)
    if side == "dialler" and "mismatch" in what:
        kind = "IP" if _is_ip(host) else "DNS"
        return ConfigError(f"node {node_id}'s certificate {files.cert!r} does not name {host!r}, its address in "
                           f"the topology file, so its peers would refuse it ({what}); issue it with "
                           f"subjectAltName {kind}:{host}")
    if side == "dialler":
        return ConfigError(f"node {node_id}'s certificate {files.cert!r} does not verify against the CA "
                           f"{files.ca!r} ({what}); use a certificate signed by that CA, and not expired")
    return ConfigError(f"node {node_id}'s certificate {files.cert!r} is refused as a client certificate by a node "
                       f"trusting {files.ca!r} ({what}); every node also dials, so its certificate needs "
                       "extendedKeyUsage clientAuth as well as serverAuth")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def node_contexts(files: TlsFiles, hosts: dict[int, str]) -> dict[int, TlsContexts]:
    """Loads and checks the TLS contexts of the nodes `hosts` ({id: address}) of one process."""
    out = {}
    for node_id, host in hosts.items():
        tls = load_tls(files.for_node(node_id))
        check_identity(tls, node_id, host)
        out[node_id] = tls
    return out
