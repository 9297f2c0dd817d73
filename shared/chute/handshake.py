"""Connections refused for their configuration (credentials, certificates, protocol), told
apart from servers that are merely down: a service retries the latter and exits at once on the
former with one line that names the setting to check (`HandshakeError`)."""

from __future__ import annotations

import socket
import ssl

from clickhouse_driver import errors as ch_errors


class HandshakeError(Exception):
    """A server refused this client's configuration; retrying cannot help. str(): one line
    naming the setting to check, without secrets."""


# ClickHouse server error codes for a refused login (18.16: UNKNOWN_USER, WRONG_PASSWORD,
# REQUIRED_PASSWORD; current servers: AUTHENTICATION_FAILED).
_CH_LOGIN_CODES = {192, 193, 194, 516}


def tls_problem(exc: BaseException, host: str, ca_setting: str, verify_setting: str,
                protocol_hint: str) -> str | None:
    """What a TLS failure means, in words that name the setting to check; None if `exc` is no
    TLS failure. ssl errors of the standard library (clickhouse-driver and the Kafka probe)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return (f"the server's certificate is not valid for {host!r} "
                    f"({exc.verify_message}); connect by a name the certificate holds, "
                    f"or set {verify_setting}=false for testing")
        return (f"the server's certificate is not trusted ({exc.verify_message}); "
                f"check {ca_setting} (the CA that signed the server's certificate)")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
            return f"the server does not speak TLS on this port; {protocol_hint}"
        if "ALERT" in reason:  # the server's alert: it refused our certificate (or none)
            return f"the server refused the client certificate ({exc.reason}); {protocol_hint}"
        return f"TLS handshake failed ({exc.reason or exc}); {protocol_hint}"
    return None


def clickhouse_problem(exc: BaseException, host: str, port: int, secure: bool) -> str | None:
    """The one-line reason a ClickHouse connection was refused for its configuration, or None
    when `exc` is no such refusal (server down, timeout: worth retrying)."""
    where = f"ClickHouse at {host}:{port}"
    if isinstance(exc, ch_errors.ServerException) and exc.code in _CH_LOGIN_CODES:
        reason = exc.message.split("Stack trace")[0].strip().rstrip(".")
        return (f"{where}: login refused ({reason}); check "
                "CHUTE_CLICKHOUSE_USER and CHUTE_CLICKHOUSE_PASSWORD (or _PASSWORD_FILE)")
    if isinstance(exc, ch_errors.NetworkError | ch_errors.UnexpectedPacketFromServerError |
                  EOFError | ConnectionError) or "EOF" in str(exc).upper():
        # clickhouse-driver keeps only the text of the ssl error it caught.
        problem = network_problem(getattr(exc, "message", str(exc)), where, secure)
        # The connection ended without a reason: a refusal only if the port is alive and
        # speaks TLS (a proxy whose server is down ends connections too).
        if problem is None and speaks_tls(host, port):
            problem = (f"{where}: the server ended the TLS handshake (it refuses the client "
                       "certificate, or its absence); check CHUTE_CLICKHOUSE_CERT_FILE and "
                       "CHUTE_CLICKHOUSE_KEY_FILE" if secure else
                       f"{where}: the port speaks TLS and this client does not; check "
                       "CHUTE_CLICKHOUSE_SECURE and CHUTE_CLICKHOUSE_PORT (TLS: 9440 by "
                       "convention)")
        return problem
    return None


def network_problem(text: str, where: str, secure: bool) -> str | None:
    """The reason in clickhouse-driver's NetworkError text, when it is a refusal."""
    ports = "check CHUTE_CLICKHOUSE_SECURE and CHUTE_CLICKHOUSE_PORT (TLS: 9440 by convention)"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        if "mismatch" in text:
            return (f"{where}: the server's certificate is not valid for this host name; "
                    "connect by a name the certificate holds (CHUTE_CLICKHOUSE_HOST), or set "
                    "CHUTE_CLICKHOUSE_VERIFY=false for testing")
        return (f"{where}: the server's certificate is not trusted; check "
                "CHUTE_CLICKHOUSE_CA_FILE (the CA that signed the server's certificate)")
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:
        return f"{where}: the server does not speak TLS on this port; {ports}"
    if "ALERT" in text:  # the server's alert: it refused the client certificate (or none)
        return (f"{where}: the server refused the client certificate "
                f"({text.split('(')[0].removeprefix('Code: 210. ').strip()}); check "
                "CHUTE_CLICKHOUSE_CERT_FILE and CHUTE_CLICKHOUSE_KEY_FILE")
    if "[SSL" in text:
        return (f"{where}: TLS handshake failed ({text.split('(')[0].strip()}); check "
                "CHUTE_CLICKHOUSE_CA_FILE, CHUTE_CLICKHOUSE_CERT_FILE/_KEY_FILE")
    return None


def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
    """True when the server on host:port answers a TLS ClientHello (certificates unchecked:
    only the protocol is asked)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except ssl.SSLError as exc:
        return "ALERT" in str(exc.reason or "").upper()  # TLS, refusing this client
    except OSError:
        return False
