"""The client side of Kafka's SASL mechanisms as pure message builders, for the start-up
check (chute.kafka.preflight), which logs in itself so that a refused login reads the same,
and as fast, on both client libraries: PLAIN (RFC 4616), SCRAM-SHA-256/512 (RFC 5802/7677)
and OAUTHBEARER's initial response (RFC 7628). Standard library only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field


def plain_message(username: str, password: str) -> bytes:
    return b"\0" + username.encode() + b"\0" + password.encode()


def oauthbearer_message(token: str, extensions: dict[str, str]) -> bytes:
    extra = "".join(f"\x01{k}={v}" for k, v in extensions.items())
    return f"n,,\x01auth=Bearer {token}{extra}\x01\x01".encode()


class ScramError(ValueError):
    """The server's SCRAM message is not what the exchange expects (not a refusal)."""


@dataclass
class ScramClient:
    """One SCRAM exchange: `first()`, then `final(server_first)`; `verify(server_final)`."""

    mechanism: str  # SCRAM-SHA-256 or SCRAM-SHA-512
    username: str
    password: str
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _first_bare: str = ""
    _server_signature: bytes = b""

    @property
    def _hash(self) -> str:
        return {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[self.mechanism]

    def first(self) -> bytes:
        name = self.username.replace("=", "=3D").replace(",", "=2C")
        self._first_bare = f"n={name},r={self.nonce}"
        return f"n,,{self._first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        nonce, salt, rounds = attrs.get("r", ""), attrs.get("s"), attrs.get("i")
        if not nonce.startswith(self.nonce) or salt is None or rounds is None:
            raise ScramError(f"unexpected server-first message: {text[:100]!r}")
        salted = hashlib.pbkdf2_hmac(self._hash, self.password.encode(),
                                     base64.b64decode(salt), int(rounds))
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> bool:
        """Whether the server proved it knows the password too (its `v=` signature)."""
        attrs = dict(part.split("=", 1) for part in server_final.decode().split(",")
                     if "=" in part)
        return hmac.compare_digest(base64.b64decode(attrs.get("v", "")), self._server_signature)

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self._hash).digest()
