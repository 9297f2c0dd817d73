"""Streaming decompression with a bound on the output (gzip, zstd), seeded random bodies."""

from __future__ import annotations

import gzip
import random

import pytest
from ingest_api.decompress import (
    CorruptBodyError,
    Decoder,
    TooLargeError,
    UnsupportedEncodingError,
    encoding_of,
    zstd,
)

SEED = 1203
COMPRESS = {"gzip": gzip.compress, "zstd": zstd.compress}


def _feed_all(decoder: Decoder, data: bytes, step: int) -> bytes:
    out = b"".join(decoder.feed(data[i:i + step]) for i in range(0, len(data), step))
    decoder.finish()
    return out


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_round_trip_in_any_pieces(encoding: str) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    body = b"\n".join(b'{"id": "%d", "v": "%s"}' % (i, rng.randbytes(20).hex().encode())
                      for i in range(2_000))
    packed = COMPRESS[encoding](body[:30_000]) + COMPRESS[encoding](body[30_000:])  # 2 members
    for step in (1, 3, 1000, rng.randint(1, 5000), len(packed)):
        assert _feed_all(Decoder(encoding, len(body)), packed, step) == body


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_bomb_is_refused_having_decoded_no_more_than_the_limit(encoding: str) -> None:
    bomb = COMPRESS[encoding](b"\0" * 100_000_000)
    decoder = Decoder(encoding, 1_000_000)
    with pytest.raises(TooLargeError):
        for i in range(0, len(bomb), 4096):
            decoder.feed(bomb[i:i + 4096])
    assert decoder.size == 1_000_001


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_exactly_the_limit_is_accepted(encoding: str) -> None:
    body = b"x" * 5000
    assert _feed_all(Decoder(encoding, 5000), COMPRESS[encoding](body), 100) == body
    with pytest.raises(TooLargeError):
        _feed_all(Decoder(encoding, 4999), COMPRESS[encoding](body), 100)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_corrupt_and_truncated_bodies(encoding: str) -> None:
    with pytest.raises(CorruptBodyError, match=encoding):
        Decoder(encoding, 1000).feed(b"this is not compressed")
    packed = COMPRESS[encoding](b"y" * 1000)
    decoder = Decoder(encoding, 10_000)
    decoder.feed(packed[: len(packed) // 2])
    with pytest.raises(CorruptBodyError, match="truncated"):
        decoder.finish()


def test_content_encoding_header() -> None:
    assert encoding_of(None) is None
    assert encoding_of("identity") is None
    assert encoding_of(" GZIP ") == "gzip"
    assert encoding_of("x-gzip") == "x-gzip"
    assert encoding_of("zstd") == "zstd"
    assert encoding_of("identity, gzip") == "gzip"
    for header in ("br", "deflate", "gzip, zstd", "compress"):
        with pytest.raises(UnsupportedEncodingError, match="gzip, zstd"):
            encoding_of(header)


def test_zstd_frames_needing_a_large_window_are_refused() -> None:
    body = random.Random(SEED).randbytes(1000) * 20_000  # 20 MB, repeats 1 KB apart
    long = zstd.compress(body, options={zstd.CompressionParameter.window_log: 27})
    with pytest.raises(CorruptBodyError, match="memory"):
        Decoder("zstd", 10**9).feed(long)
    assert _feed_all(Decoder("zstd", len(body)), zstd.compress(body, 19), 65536) == body
