"""An OAuth 2.0 token endpoint on loopback for the secure tests: the client credentials grant
(HTTP Basic), answered with an RS256 JWT signed by the key the runner's secure mode made and
the broker trusts (its public half is the broker's JWKS). Signed with the openssl CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dev_runner import secure

LIFETIME = 600


@dataclass(frozen=True)
class Provider:
    url: str
    client_id: str
    client_secret: str
    issued: list[str]  # the client id of each token issued


def signed_token(key: Path, claims: dict[str, object]) -> str:
    header = {"alg": "RS256", "typ": "JWT", "kid": secure.OAUTH_KEY_ID}
    signing_input = ".".join(secure.base64url(json.dumps(part).encode())
                             for part in (header, claims))
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)],
                               input=signing_input.encode(), capture_output=True,
                               check=True).stdout
    return f"{signing_input}.{secure.base64url(signature)}"


@contextmanager
def running(files: secure.SecureFiles, signing_key: Path | None = None) -> Iterator[Provider]:
    """The provider the broker trusts, or (with another `signing_key`) one it does not."""
    key = signing_key or files.oauth_signing_key
    client_secret = files.oauth_client_secret.read_text().strip()
    issued: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            scheme, _, encoded = (self.headers.get("Authorization") or "").partition(" ")
            user, _, password = base64.b64decode(encoded or "").decode().partition(":")
            if scheme != "Basic" or (user, password) != (secure.OAUTH_CLIENT_ID, client_secret):
                self._answer(401, {"error": "invalid_client"})
                return
            now = int(time.time())
            token = signed_token(key, {
                "sub": user, "iss": "chute-test-idp", "aud": secure.OAUTH_AUDIENCE,
                "iat": now, "exp": now + LIFETIME, "scope": "kafka"})
            issued.append(user)
            self._answer(200, {"access_token": token, "token_type": "Bearer",
                               "expires_in": LIFETIME})

        def _answer(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-idp", daemon=True)
    thread.start()
    try:
        yield Provider(f"http://127.0.0.1:{server.server_address[1]}/token",
                       secure.OAUTH_CLIENT_ID, client_secret, issued)
    finally:
        server.shutdown()
        server.server_close()
