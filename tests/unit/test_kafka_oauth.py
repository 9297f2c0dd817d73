"""SASL/OAUTHBEARER settings: what each backend is given, what is refused at start, and the
client credentials exchange against a token endpoint on loopback (a real HTTP server)."""

from __future__ import annotations

import dataclasses
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from chute.kafka.client_config import backend_config
from chute.kafka.oauth import ClientCredentials, TokenEndpointUnreachable, TokenRefused
from chute.kafka.security import KafkaSecurity
from chute.settings import CommonSettings
from pydantic import ValidationError

SECRET = "client-secret-8812"


def oauth_security(url: str = "https://idp.example/token") -> KafkaSecurity:
    return KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                         sasl_username="svc", sasl_password=SECRET, oauth_token_url=url,
                         oauth_scope="kafka", oauth_extensions="logicalCluster=lkc-1, pool=p")


def test_librdkafka_fetches_its_own_tokens() -> None:
    config = backend_config("confluent-kafka", {}, oauth_security())
    assert config["sasl.mechanism"] == "OAUTHBEARER"
    assert config["sasl.oauthbearer.method"] == "oidc"
    assert config["sasl.oauthbearer.client.id"] == "svc"
    assert config["sasl.oauthbearer.client.secret"] == SECRET
    assert config["sasl.oauthbearer.token.endpoint.url"] == "https://idp.example/token"
    assert config["sasl.oauthbearer.scope"] == "kafka"
    assert config["sasl.oauthbearer.extensions"] == "logicalCluster=lkc-1,pool=p"
    assert "sasl.username" not in config and "sasl.password" not in config


def test_kafka_python_gets_a_token_provider() -> None:
    config = backend_config("kafka-python", {}, oauth_security())
    provider = config["sasl_oauth_token_provider"]
    assert provider.extensions() == {"logicalCluster": "lkc-1", "pool": "p"}
    assert "sasl_plain_password" not in config


def test_oauthbearer_needs_a_token_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"CHUTE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                       "CHUTE_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                       "CHUTE_KAFKA_SASL_USERNAME": "svc",
                       "CHUTE_KAFKA_SASL_PASSWORD": SECRET}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CHUTE_KAFKA_SASL_OAUTHBEARER_TOKEN_URL", raising=False)
    with pytest.raises(ValidationError, match="CHUTE_KAFKA_SASL_OAUTHBEARER_TOKEN_URL") as err:
        CommonSettings()
    assert SECRET not in str(err.value)
    monkeypatch.setenv("CHUTE_KAFKA_SASL_OAUTHBEARER_TOKEN_URL", "https://idp.example/t")
    assert CommonSettings().kafka_security().oauth


class Endpoint:
    """Answers the client credentials grant for ("svc", SECRET); counts the grants."""

    def __init__(self, lifetime: int) -> None:
        self.lifetime = lifetime
        self.grants: list[str] = []


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, str]]:
    state = Endpoint(lifetime=100)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            good = self.headers["Authorization"] == "Basic c3ZjOmNsaWVudC1zZWNyZXQtODgxMg=="
            answer = {"access_token": f"t{len(state.grants)}", "expires_in": state.lifetime}
            if good:
                state.grants.append(body)
            data = json.dumps(answer if good else {"error": "invalid_client"}).encode()
            self.send_response(200 if good else 401)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_is_reused_until_most_of_its_lifetime_has_passed(
        endpoint: tuple[Endpoint, str]) -> None:
    state, url = endpoint
    now = [0.0]
    credentials = ClientCredentials(oauth_security(url), clock=lambda: now[0])
    assert credentials.token() == "t0"
    now[0] = 79.0
    assert credentials.token() == "t0"
    now[0] = 81.0  # 80 % of 100 s
    assert credentials.token() == "t1"
    assert state.grants == ["grant_type=client_credentials&scope=kafka"] * 2


def test_a_wrong_secret_and_a_dead_endpoint_are_told_apart(
        endpoint: tuple[Endpoint, str]) -> None:
    _, url = endpoint
    wrong = dataclasses.replace(oauth_security(url), sasl_password="nope")
    with pytest.raises(TokenRefused, match="HTTP 401"):
        ClientCredentials(wrong).fetch()
    with pytest.raises(TokenEndpointUnreachable):
        ClientCredentials(oauth_security("http://127.0.0.1:9/token"), timeout=2).fetch()


def test_sasl_authenticate_answers_are_parsed() -> None:
    from chute.kafka.preflight import parse_sasl_authenticate

    accepted = struct.pack(">hh", 0, -1) + struct.pack(">i", 0)
    assert parse_sasl_authenticate(accepted) == (0, "", b"")
    challenge = b'{"status":"invalid_token"}'
    refused = struct.pack(">hh", 0, -1) + struct.pack(">i", len(challenge)) + challenge
    assert parse_sasl_authenticate(refused) == (0, "", challenge)
    failed = struct.pack(">hh", 58, 4) + b"nope" + struct.pack(">i", -1)
    assert parse_sasl_authenticate(failed) == (58, "nope", b"")


def test_scram_messages_follow_rfc_7677() -> None:
    """RFC 7677's SCRAM-SHA-256 example exchange, byte for byte."""
    from chute.kafka.sasl import ScramClient

    scram = ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert scram.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert scram.final(server_first) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert scram.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert not scram.verify(b"v=AAAA")
