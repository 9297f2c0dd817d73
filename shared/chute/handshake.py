"""Connections refused for their configuration (credentials, certificates, protocol), told
apart from servers that are merely down: a service retries the latter and exits at once on the
former with one line that names the setting to check (`HandshakeError`)."""

from __future__ import annotations

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
    if isinstance(exc, ch_errors.NetworkError):
        # clickhouse-driver keeps only the text of the ssl error it caught.
        return network_problem(exc.message, where, secure)
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
    if not secure and ("reset by peer" in text or "EOF" in text.upper()):
        return (f"{where}: the server closed the connection on a plaintext hello (a TLS "
                f"port?); {ports}")
    return None
