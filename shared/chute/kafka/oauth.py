"""OAuth 2.0 client credentials (RFC 6749, section 4.4) for SASL/OAUTHBEARER: the client id
and secret are exchanged at the identity provider's token endpoint for a token the broker
checks. librdkafka does this itself (`sasl.oauthbearer.method=oidc`); kafka-python and the
start-up check use `ClientCredentials`. Standard library only."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from chute.kafka.security import KafkaSecurity

_REFRESH_AT = 0.8  # of a token's lifetime: fetch the next one then


class TokenRefused(Exception):
    """The token endpoint answered, and not with a token (wrong client id or secret, a scope
    it does not grant)."""


class TokenEndpointUnreachable(Exception):
    """No answer from the token endpoint (a wrong URL, or the provider is down)."""


class ClientCredentials:
    """A token for `security`'s client, fetched when first asked for and again once 80 % of
    its lifetime has passed; safe to call from any thread."""

    def __init__(self, security: KafkaSecurity, timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.security = security
        self.timeout = timeout
        self.clock = clock
        self._token = ""
        self._refresh_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if not self._token or self.clock() >= self._refresh_at:
                token, lifetime = self.fetch()
                self._token = token
                self._refresh_at = self.clock() + max(1.0, lifetime * _REFRESH_AT)
            return self._token

    def fetch(self) -> tuple[str, float]:
        """(token, seconds it is valid) from the token endpoint."""
        s = self.security
        form = {"grant_type": "client_credentials"}
        if s.oauth_scope:
            form["scope"] = s.oauth_scope
        basic = base64.b64encode(
            f"{urllib.parse.quote(s.sasl_username)}:{urllib.parse.quote(s.sasl_password)}"
            .encode()).decode()
        request = urllib.request.Request(
            s.oauth_token_url, data=urllib.parse.urlencode(form).encode(), method="POST",
            headers={"Authorization": f"Basic {basic}", "Accept": "application/json",
                     "Content-Type": "application/x-www-form-urlencoded"})
        context = ssl.create_default_context() if s.oauth_token_url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", errors="replace")
            raise TokenRefused(f"HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TokenEndpointUnreachable(str(getattr(exc, "reason", exc))) from None
        except ValueError:
            raise TokenRefused("the answer is not JSON") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenRefused("the answer holds no access_token")
        lifetime = body.get("expires_in", 300)
        return token, float(lifetime) if isinstance(lifetime, int | float) else 300.0
