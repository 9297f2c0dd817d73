"""Classifying insert failures: transient (retry the same batch) or data (bad rows)."""

from __future__ import annotations

import socket
import struct

from clickhouse_driver import errors as ch_errors

# ClickHouse codes that mean the data itself was refused: bisect and dead-letter.
DATA_ERROR_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    691,  # UNKNOWN_ELEMENT_OF_ENUM
})

TRANSIENT = "transient"
DATA = "data"


def classify(exc: BaseException) -> str:
    """Everything that is not clearly the data's fault is retried: retrying a good batch
    costs time, dead-lettering it would lose it from the table."""
    if isinstance(exc, ch_errors.ServerException):
        return DATA if exc.code in DATA_ERROR_CODES else TRANSIENT
    if isinstance(exc, (ch_errors.NetworkError, ch_errors.SocketTimeoutError, socket.error,
                        EOFError, TimeoutError, ConnectionError)):
        return TRANSIENT
    # Raised by clickhouse-driver while serialising a column: a value that does not fit
    # its ClickHouse type (e.g. 300 into UInt8, a too long FixedString).
    if isinstance(exc, (struct.error, OverflowError, ValueError, TypeError,
                        ch_errors.TypeMismatchError, ch_errors.TooLargeStringSize)):
        return DATA
    return TRANSIENT
