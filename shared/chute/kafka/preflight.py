"""A quick look at the first bootstrap broker before a service starts its clients: a refused
TLS handshake, a SASL mechanism the broker does not offer, a plaintext client on a TLS listener
or wrong credentials raise HandshakeError within seconds (the clients would retry them
silently until their timeouts); a broker that cannot be reached is left to the caller's retry.

Everything is checked here with the standard library and Kafka's protocol, the same whatever
client library the service uses: TLS, then ApiVersions v0 (no SASL) or SaslHandshake v1 and a
login with SaslAuthenticate v0 (PLAIN, SCRAM, or an OAUTHBEARER token fetched from the
provider; chute.kafka.sasl).
"""

from __future__ import annotations

import socket
import ssl
import struct

from chute.handshake import HandshakeError, tls_problem
from chute.kafka import sasl
from chute.kafka.oauth import ClientCredentials, TokenEndpointUnreachable, TokenRefused
from chute.kafka.security import SETTING_NAMES, KafkaSecurity

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_CORRELATION = 7301
# The first bytes of a TLS alert or handshake record (TLS 1.0-1.3 all say 3.x).
_TLS_RECORDS = (b"\x15\x03", b"\x16\x03")


def first_address(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 9092)


def tls_context(security: KafkaSecurity) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=security.ca_file)
    context.check_hostname = security.verify_hostname
    if security.cert_file:
        context.load_cert_chain(security.cert_file, security.key_file,
                                security.key_password or None)
    return context


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def request(api_key: int, version: int, body: bytes) -> bytes:
    message = struct.pack(">hhi", api_key, version, _CORRELATION) + _string("chute-check") + body
    return struct.pack(">i", len(message)) + message


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


class NoAnswerYet(Exception):
    """The broker accepted the connection but did not answer in time: busy or hung, not a
    refusal (the caller's retry decides)."""


def response(sock: socket.socket) -> bytes | None:
    """The body of the answer to our request, or None when what came back is not Kafka's
    answer (other bytes, e.g. a TLS alert); NoAnswerYet when nothing came back. A TLS error
    (a client certificate refused after the handshake) is raised as ssl.SSLError."""
    try:
        head = _read_exact(sock, 4)
        if head[:2] in _TLS_RECORDS:
            return None  # the listener speaks TLS
        size, = struct.unpack(">i", head)
        if not 4 <= size <= 1 << 20:
            return None
        payload = _read_exact(sock, size)
    except ssl.SSLError:
        raise
    except OSError:
        # Timed out, or closed without a word: a proxy whose broker is down does that too.
        raise NoAnswerYet from None
    correlation, = struct.unpack(">i", payload[:4])
    return payload[4:] if correlation == _CORRELATION else None


def parse_sasl_handshake(body: bytes) -> tuple[int, list[str]]:
    """(error code, the mechanisms the broker enables) of a SaslHandshake v1 answer."""
    error, count = struct.unpack(">hi", body[:6])
    mechanisms, at = [], 6
    for _ in range(max(count, 0)):
        size, = struct.unpack(">h", body[at:at + 2])
        mechanisms.append(body[at + 2:at + 2 + size].decode())
        at += 2 + size
    return error, mechanisms


def check(bootstrap: str, security: KafkaSecurity, timeout: float = 10.0) -> None:
    """Raises HandshakeError when the first broker refuses this configuration."""
    host, port = first_address(bootstrap)
    where = f"Kafka at {host}:{port}"
    try:
        raw = socket.create_connection((host, port), timeout=min(timeout, 5.0))
    except OSError:
        return  # not reachable (yet): the caller's retry decides
    with raw:
        try:
            _look(raw, host, where, security)
        except NoAnswerYet:
            return
        except ssl.SSLError as exc:
            raise HandshakeError(f"{where}: {_tls_problem(exc, host, security)}") from None


def token_for(security: KafkaSecurity, timeout: float = 10.0) -> str:
    """OAUTHBEARER: the client credentials exchanged for a token once, so a wrong secret or
    token URL is named here rather than retried by the clients."""
    url = security.oauth_token_url
    names = f"{SETTING_NAMES['sasl_username']} and {SETTING_NAMES['sasl_password']} (or _FILE)"
    try:
        return ClientCredentials(security, timeout=timeout).fetch()[0]
    except TokenRefused as exc:
        raise HandshakeError(
            f"OAuth token endpoint {url}: no token for client {security.sasl_username!r} "
            f"({exc}); check {names} (the client id and secret) and "
            f"{SETTING_NAMES['oauth_scope']}") from None
    except TokenEndpointUnreachable as exc:
        raise HandshakeError(
            f"OAuth token endpoint {url}: not reachable ({exc}); check "
            f"{SETTING_NAMES['oauth_token_url']}") from None


def _tls_problem(exc: BaseException, host: str, security: KafkaSecurity) -> str | None:
    if (not security.cert_file and isinstance(exc, ssl.SSLError)
            and not isinstance(exc, ssl.SSLCertVerificationError)
            and "ALERT" in (exc.reason or str(exc)).upper()):
        # The server's alert after a handshake in which we sent no certificate.
        return (f"the server requires a client certificate and none is set ({exc.reason}); "
                f"set {SETTING_NAMES['cert_file']} and {SETTING_NAMES['key_file']}")
    return tls_problem(exc, host, SETTING_NAMES["ca_file"], SETTING_NAMES["verify_hostname"],
                       f"check {SETTING_NAMES['protocol']}={security.protocol}, "
                       f"{SETTING_NAMES['cert_file']} and {SETTING_NAMES['key_file']}")


def _look(raw: socket.socket, host: str, where: str, security: KafkaSecurity) -> None:
    """TLS handshake (when configured), then one request; raises what the answer means."""
    sock = raw
    if security.tls:
        try:
            sock = tls_context(security).wrap_socket(raw, server_hostname=host)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise NoAnswerYet from None  # closed without a word: no evidence of a refusal
        except ssl.SSLError:
            raise  # check() says what it means
        except OSError:  # timed out or reset during the handshake: not an answer
            raise NoAnswerYet from None
    if security.sasl:
        sock.sendall(request(_SASL_HANDSHAKE, 1, _string(security.sasl_mechanism)))
        body = response(sock)
        if body is not None:
            error, offered = parse_sasl_handshake(body)
            if error:
                raise HandshakeError(
                    f"{where}: the broker does not offer SASL mechanism "
                    f"{security.sasl_mechanism} (it offers {', '.join(offered) or 'none'}); "
                    f"check {SETTING_NAMES['sasl_mechanism']}")
            _log_in(sock, where, security)
    else:
        sock.sendall(request(_API_VERSIONS, 0, b""))
        body = response(sock)
    if body is None:
        expects = "TLS" if not security.tls else "another protocol"
        raise HandshakeError(
            f"{where}: the broker did not answer a {security.protocol} request (does the "
            f"listener expect {expects} or SASL?); check {SETTING_NAMES['protocol']}")


def _log_in(sock: socket.socket, where: str, security: KafkaSecurity) -> None:
    """SaslAuthenticate v0 exchanges for the configured mechanism, after a SaslHandshake v1
    the broker accepted; raises HandshakeError naming the settings when it refuses. The same
    whatever client library the service uses (each would otherwise retry a refusal quietly
    until its own timeout)."""
    if security.oauth:
        answer = _authenticate(sock, sasl.oauthbearer_message(
            token_for(security), security.extensions()))
        # A refused token gets a JSON challenge (`{"status":"invalid_token"}`) before the
        # broker fails the exchange.
        _refused_unless(answer, where, security, challenge_is_refusal=True)
    elif security.sasl_mechanism == "PLAIN":
        answer = _authenticate(sock, sasl.plain_message(security.sasl_username,
                                                        security.sasl_password))
        _refused_unless(answer, where, security)
    else:
        scram = sasl.ScramClient(security.sasl_mechanism, security.sasl_username,
                                 security.sasl_password)
        answer = _authenticate(sock, scram.first())
        _refused_unless(answer, where, security)
        try:
            final = scram.final(answer[2])
        except sasl.ScramError as exc:
            raise _credentials_refused(where, security, str(exc)) from None
        answer = _authenticate(sock, final)
        _refused_unless(answer, where, security)


def _authenticate(sock: socket.socket, auth: bytes) -> tuple[int, str, bytes]:
    sock.sendall(request(_SASL_AUTHENTICATE, 0, struct.pack(">i", len(auth)) + auth))
    body = response(sock)
    if body is None:
        raise NoAnswerYet
    return parse_sasl_authenticate(body)


def _refused_unless(answer: tuple[int, str, bytes], where: str, security: KafkaSecurity,
                    challenge_is_refusal: bool = False) -> None:
    error, message, challenge = answer
    if error or (challenge_is_refusal and challenge):
        detail = message or challenge.decode("utf-8", errors="replace") or f"error {error}"
        raise _credentials_refused(where, security, detail)


def parse_sasl_authenticate(body: bytes) -> tuple[int, str, bytes]:
    """(error code, error message, server bytes) of a SaslAuthenticate v0 answer."""
    error, size = struct.unpack(">hh", body[:4])
    at = 4 + max(size, 0)
    message = body[4:at].decode("utf-8", errors="replace") if size > 0 else ""
    length, = struct.unpack(">i", body[at:at + 4])
    return error, message, body[at + 4:at + 4 + max(length, 0)]


def _credentials_refused(where: str, security: KafkaSecurity, detail: str) -> HandshakeError:
    if security.oauth:
        return HandshakeError(
            f"{where}: SASL OAUTHBEARER authentication of client {security.sasl_username!r} "
            f"failed ({detail}): the broker refused the token from "
            f"{security.oauth_token_url}; check {SETTING_NAMES['oauth_token_url']} (the "
            f"provider the broker trusts) and {SETTING_NAMES['oauth_scope']}")
    return HandshakeError(
        f"{where}: SASL {security.sasl_mechanism} authentication of user "
        f"{security.sasl_username!r} failed ({detail}); check "
        f"{SETTING_NAMES['sasl_username']} and {SETTING_NAMES['sasl_password']} (or _FILE)")
