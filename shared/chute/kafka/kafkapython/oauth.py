"""kafka-python's token provider for SASL/OAUTHBEARER, over chute's client credentials."""

from __future__ import annotations

from kafka.net.sasl.oauth import AbstractTokenProvider

from chute.kafka.oauth import ClientCredentials
from chute.kafka.security import KafkaSecurity


class TokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    def __init__(self, security: KafkaSecurity) -> None:
        super().__init__()
        self.credentials = ClientCredentials(security)
        self._extensions = security.extensions()

    def token(self) -> str:
        return self.credentials.token()

    def extensions(self) -> dict[str, str]:
        return dict(self._extensions)
