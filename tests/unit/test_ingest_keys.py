"""API keys: entries, constant-time matching, per-key token buckets (injected clock), the
`chute keys` command, and settings that never print a secret."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
from chute.settings import load_settings
from control_plane.cli import main as chute
from ingest_api.keys import (
    ALLOWED,
    UNKNOWN_KEY,
    KeyEntryError,
    KeyRing,
    digest,
    new_key,
    parse_entry,
)
from ingest_api.settings import IngestSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_new_keys_are_random_and_digests_are_sha256() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    key = keys.pop()
    assert key.startswith("chute_") and len(key) >= 6 + 43  # 32 random bytes, base64url
    assert digest(key) == hashlib.sha256(key.encode()).hexdigest()


def test_entries_with_and_without_rate() -> None:
    d = digest("k")
    assert parse_entry(d).rate is None
    assert parse_entry(f" {d.upper()}:2.5 ").rate == 2.5
    assert parse_entry(d).digest == hashlib.sha256(b"k").digest()
    for bad_rate in ("0", "-1", "x", "inf", "nan"):
        with pytest.raises(KeyEntryError, match="rate"):
            parse_entry(f"{d}:{bad_rate}")


def test_a_key_where_a_digest_belongs_is_refused_without_repeating_it() -> None:
    key = new_key()
    with pytest.raises(KeyEntryError) as info:
        parse_entry(key)
    assert key not in str(info.value) and key[6:16] not in str(info.value)
    assert "chute keys new" in str(info.value)


def test_ring_matches_keys_and_limits_each_on_its_own() -> None:
    clock = Clock()
    ring = KeyRing.from_entries([parse_entry(digest("free")), parse_entry(f"{digest('slow')}:2")],
                                clock)
    assert ring.check("Bearer free") is ALLOWED
    assert ring.check("Bearer nope") is UNKNOWN_KEY
    assert ring.check("Basic free") is UNKNOWN_KEY
    assert ring.check("") is UNKNOWN_KEY
    assert [ring.check("Bearer slow").allowed for _ in range(3)] == [True, True, False]
    refused = ring.check("Bearer slow")
    assert not refused.allowed and refused.retry_after == 1
    assert all(ring.check("Bearer free").allowed for _ in range(100))  # not held up
    clock.now += 0.5  # one token back at 2/s
    assert ring.check("Bearer slow").allowed
    assert not ring.check("Bearer slow").allowed
    clock.now += 10  # refills to the bucket's size (one second of requests), no more
    assert [ring.check("Bearer slow").allowed for _ in range(3)] == [True, True, False]


def test_slow_rates_ask_to_wait_longer() -> None:
    clock = Clock()
    ring = KeyRing.from_entries([parse_entry(f"{digest('k')}:0.1")], clock)
    assert ring.check("Bearer k").allowed  # a bucket holds at least one request
    refused = ring.check("Bearer k")
    assert refused.retry_after == 10


def test_matching_compares_with_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("ingest_api.keys.hmac.compare_digest", counting)
    ring = KeyRing.from_entries([parse_entry(digest(k)) for k in "abc"], Clock())
    assert ring.match("a") is not None
    assert len(calls) == 3  # no early exit on the first match


def test_chute_keys_new_and_digest(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert chute(["keys", "new"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines()[:2])
    key, shown = lines["key"].strip(), lines["digest"].strip()
    assert shown == digest(key)
    assert IngestSettings(ingest_api_keys=shown).api_key_entries[0].digest == bytes.fromhex(shown)
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert chute(["keys", "digest"]) == 0
    assert capsys.readouterr().out.strip() == shown


def test_invalid_secret_settings_are_named_but_never_shown(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_key()
    monkeypatch.setenv("CHUTE_INGEST_API_KEYS", f"{digest('x')},{key}")
    monkeypatch.setenv("CHUTE_INGEST_PORT", "not-a-port")
    with pytest.raises(SystemExit):
        load_settings(IngestSettings)
    err = capsys.readouterr().err
    assert "CHUTE_INGEST_API_KEYS" in err and key not in err and digest("x") not in err
    assert "'not-a-port'" in err  # values of other settings are still shown


def test_docs_are_public_only_without_keys_unless_set() -> None:
    assert IngestSettings().docs_public
    assert not IngestSettings(ingest_api_keys=digest("k")).docs_public
    assert IngestSettings(ingest_api_keys=digest("k"), ingest_public_docs=True).docs_public
    assert not IngestSettings(ingest_public_docs=False).docs_public


def test_secret_settings_stay_out_of_the_repr() -> None:
    settings = IngestSettings(ingest_api_keys=digest("k"), clickhouse_password="pw-8d1f")
    assert digest("k") not in repr(settings) and "pw-8d1f" not in repr(settings)
    assert "ingest_max_body_bytes" in repr(settings)
