"""The runner's secure mode (`scripts/dev up --secure`): Kafka's only client listener is
SASL_SSL with SCRAM-SHA-512 users, ClickHouse gets a TLS native port, and the services connect
through them with a CA and certificates made here under <state>/secure/ (openssl CLI).

The listener also takes OAUTHBEARER: the broker checks tokens against the public key in
<state>/secure/oauth-jwks.json (RS256, key id `OAUTH_KEY_ID`); whatever signs tokens with
oauth-signing.key is the identity provider it trusts (the secure tests run one).

The mode is remembered by the file <state>/secure/enabled, so later `start`/`restart` keep it;
Kafka's SCRAM users are created when its storage is formatted (`--add-scram`), so a data folder
formatted in the other mode is refused rather than half-working.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chute.kafka.security import KafkaSecurity, SaslMechanism

from dev_runner.settings import RunnerError, Settings

MECHANISM: SaslMechanism = "SCRAM-SHA-512"
PLAIN_SIDE_MECHANISMS = "PLAIN,SCRAM-SHA-256"  # the SASL_PLAINTEXT listener's
CLIENT_USER = "chute"
BROKER_USER = "broker"
OAUTH_KEY_ID = "chute-dev"
OAUTH_AUDIENCE = "chute-kafka"
OAUTH_CLIENT_ID = "chute-oauth"


@dataclass(frozen=True)
class SecureFiles:
    """Everything secure mode writes, under <state>/secure/."""

    folder: Path

    @property
    def marker(self) -> Path:
        return self.folder / "enabled"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def kafka_keystore(self) -> Path:  # key (PKCS#8) + certificate + CA, Kafka's PEM keystore
        return self.folder / "kafka-keystore.pem"

    @property
    def client_password(self) -> Path:
        return self.folder / "kafka-chute.password"

    @property
    def broker_password(self) -> Path:
        return self.folder / "kafka-broker.password"

    @property
    def oauth_signing_key(self) -> Path:
        return self.folder / "oauth-signing.key"

    @property
    def oauth_jwks(self) -> Path:
        return self.folder / "oauth-jwks.json"

    @property
    def oauth_client_secret(self) -> Path:
        return self.folder / "oauth-client.secret"

    @property
    def formatted_marker(self) -> Path:
        return self.folder / "kafka-formatted-with-scram"


def files(s: Settings) -> SecureFiles:
    return SecureFiles(s.state / "secure")


def enabled(s: Settings) -> bool:
    return files(s).marker.exists()


def enable(s: Settings) -> None:
    f = files(s)
    meta = s.kafka_log_dirs / "meta.properties"
    if meta.exists() and not f.formatted_marker.exists():
        raise RunnerError(
            f"Kafka's data in {s.kafka_data} was formatted without SCRAM users: stop "
            f"everything and remove {s.kafka_data}, or use another CHUTE_STATE for --secure")
    f.folder.mkdir(parents=True, exist_ok=True)
    f.marker.write_text("SASL_SSL Kafka, TLS ClickHouse\n")


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RunnerError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def _signed(f: SecureFiles, key: Path, cert: Path, name: str, extensions: str) -> None:
    csr = cert.with_suffix(".csr")
    ext = cert.with_suffix(".ext")
    ext.write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", f.ca_cert, "-CAkey", f.ca_key,
             "-CAcreateserial", "-out", cert, "-days", "825", "-sha256", "-extfile", ext)
    csr.unlink()
    ext.unlink()
    key.chmod(0o600)


def ensure_certificates(s: Settings) -> SecureFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (mTLS),
    made once; the Kafka keystore; random SCRAM passwords."""
    f = files(s)
    f.folder.mkdir(parents=True, exist_ok=True)
    if not f.ca_cert.exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f.ca_key,
                 "-out", f.ca_cert, "-days", "3650", "-sha256", "-subj", "/CN=chute dev CA")
        f.ca_key.chmod(0o600)
    if not f.server_cert.exists():
        _signed(f, f.server_key, f.server_cert, s.host,
                f"subjectAltName=IP:{s.host},DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    if not f.client_cert.exists():
        _signed(f, f.client_key, f.client_cert, "chute client",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=clientAuth\n")
    if not f.kafka_keystore.exists():
        f.kafka_keystore.write_text(f.server_key.read_text() + f.server_cert.read_text()
                                    + f.ca_cert.read_text())
        f.kafka_keystore.chmod(0o600)
    for path in (f.client_password, f.broker_password, f.oauth_client_secret):
        if not path.exists():
            path.write_text(secrets.token_hex(16) + "\n")
            path.chmod(0o600)
    if not f.oauth_jwks.exists():
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", f.oauth_signing_key)
        f.oauth_signing_key.chmod(0o600)
        f.oauth_jwks.write_text(json.dumps({"keys": [_public_jwk(f.oauth_signing_key)]}))
    return f


def _public_jwk(key: Path) -> dict[str, str]:
    """The RSA public key of `key` as a JSON Web Key (RFC 7517) for RS256."""
    done = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-modulus"],
                          capture_output=True, text=True, check=True)
    modulus = bytes.fromhex(done.stdout.strip().partition("=")[2])
    return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": OAUTH_KEY_ID,
            "n": base64url(modulus), "e": base64url((65537).to_bytes(3, "big"))}


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _password(path: Path) -> str:
    return path.read_text().strip()


def kafka_properties(rendered: str, s: Settings) -> str:
    """The plaintext runner's server.properties with its client listener made SASL_SSL, and
    two more: MTLS (TLS with a required client certificate) on kafka_mtls_port and
    SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256) on kafka_sasl_plaintext_port."""
    f = files(s)
    listeners = (f"SASL_SSL://{s.host}:{s.kafka_port},"
                 f"MTLS://{s.host}:{s.kafka_mtls_port},"
                 f"SASL_PLAINTEXT://{s.host}:{s.kafka_sasl_plaintext_port},"
                 f"CONTROLLER://{s.host}:{s.kafka_controller_port}")
    replaced = {
        "listeners": listeners,
        "advertised.listeners": listeners,
        "listener.security.protocol.map": ("CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL,"
                                           "SASL_PLAINTEXT:SASL_PLAINTEXT"),
        "inter.broker.listener.name": "SASL_SSL",
    }
    lines = []
    for line in rendered.splitlines():
        key = line.partition("=")[0].strip()
        lines.append(f"{key}={replaced[key]}" if key in replaced else line)
    jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{_password(f.broker_password)}";')
    lines += [
        "",
        "# Secure mode (scripts/dev up --secure): SCRAM over TLS with PEM files from the runner.",
        f"sasl.enabled.mechanisms={MECHANISM},OAUTHBEARER",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config={jaas}",
        # OAUTHBEARER: tokens signed by the key whose public half is in the JWKS file.
        "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config="
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required ;",
        "listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class="
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler",
        f"sasl.oauthbearer.jwks.endpoint.url={f.oauth_jwks.as_uri()}",
        # Kafka 4.1's default validator (DefaultJwtValidator) checks no signature when the
        # handler builds it: without this line a token signed by anyone is accepted.
        "sasl.oauthbearer.jwt.validator.class="
        "org.apache.kafka.common.security.oauthbearer.BrokerJwtValidator",
        f"sasl.oauthbearer.expected.audience={OAUTH_AUDIENCE}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={f.kafka_keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={f.ca_cert}",
        # SASL_SSL: clients may present a certificate; none is required.
        "ssl.client.auth=requested",
        # MTLS (kafka_mtls_port): TLS alone, a certificate signed by the CA required.
        "listener.name.mtls.ssl.client.auth=required",
        # SASL_PLAINTEXT (kafka_sasl_plaintext_port): PLAIN for the client user, and
        # SCRAM-SHA-256 for users given such credentials (the tests add the client user's).
        f"listener.name.sasl_plaintext.sasl.enabled.mechanisms={PLAIN_SIDE_MECHANISMS}",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{CLIENT_USER}="{_password(f.client_password)}";',
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required ;",
    ]
    return "\n".join(lines) + "\n"


def format_args(s: Settings) -> tuple[str, ...]:
    """`kafka-storage format` arguments that create the SCRAM users."""
    f = ensure_certificates(s)
    f.formatted_marker.write_text(f"{MECHANISM} users {CLIENT_USER}, {BROKER_USER}\n")
    return tuple(
        arg
        for user, path in ((CLIENT_USER, f.client_password), (BROKER_USER, f.broker_password))
        for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={_password(path)}]")
    )


def clickhouse_config(rendered: str, s: Settings) -> str:
    """The plaintext runner's config.xml plus a TLS native port. Client certificates are
    checked against the CA when one is presented (relaxed), not required."""
    f = files(s)
    tls = f"""
    <!-- Secure mode of scripts/dev: the native protocol over TLS. -->
    <tcp_port_secure>{s.clickhouse_secure_port}</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>{f.server_cert}</certificateFile>
            <privateKeyFile>{f.server_key}</privateKeyFile>
            <caConfig>{f.ca_cert}</caConfig>
            <verificationMode>relaxed</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
"""
    head, sep, tail = rendered.rpartition("</yandex>")
    if not sep:
        raise RunnerError("the ClickHouse config has no </yandex> to add the TLS port to")
    return head + tls + sep + tail


def kafka_security(s: Settings) -> KafkaSecurity:
    f = files(s)
    return KafkaSecurity(protocol="SASL_SSL", sasl_mechanism=MECHANISM,
                         sasl_username=CLIENT_USER, sasl_password=_password(f.client_password),
                         ca_file=str(f.ca_cert))


def service_env(s: Settings) -> tuple[tuple[str, str], ...]:
    """What the chute services need to connect in secure mode (the password by file)."""
    f = files(s)
    return (
        ("CHUTE_KAFKA_BOOTSTRAP", s.kafka_bootstrap),
        ("CHUTE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("CHUTE_KAFKA_SASL_MECHANISM", MECHANISM),
        ("CHUTE_KAFKA_SASL_USERNAME", CLIENT_USER),
        ("CHUTE_KAFKA_SASL_PASSWORD_FILE", str(f.client_password)),
        ("CHUTE_KAFKA_SSL_CA_FILE", str(f.ca_cert)),
        ("CHUTE_CLICKHOUSE_HOST", s.host),
        ("CHUTE_CLICKHOUSE_SECURE", "true"),
        ("CHUTE_CLICKHOUSE_PORT", str(s.clickhouse_secure_port)),
        ("CHUTE_CLICKHOUSE_CA_FILE", str(f.ca_cert)),
    )


def kafka_jvm_options(s: Settings) -> tuple[str, ...]:
    """Kafka reads an OAuth JWKS only from URLs a system property allows."""
    return (f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={files(s).oauth_jwks.as_uri()}",)
