"""Classifying insert, read and produce failures into what the sync does about them.

- transient: the server or the network is in trouble; retry the same batch with backoff,
  for as long as it takes (the rows are safe in Kafka meanwhile).
- data: ClickHouse refused the rows themselves; bisect and dead-letter the bad ones.
- schema: the table does not match the model (a column or the table is missing, usually a
  model change without `chute apply`); pause the pipeline and retry slowly: it resumes by
  itself once the table is fixed.
- unknown: anything else; retried a bounded number of times, then the pipeline is failed.
"""

from __future__ import annotations

import socket
import struct

from clickhouse_driver import errors as ch_errors

TRANSIENT = "transient"
DATA = "data"
SCHEMA = "schema"
UNKNOWN = "unknown"

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

# The table does not have what the model needs: fixed by `chute apply`, not by retrying fast.
SCHEMA_ERROR_CODES = frozenset({
    10,   # NOT_FOUND_COLUMN_IN_BLOCK
    16,   # NO_SUCH_COLUMN_IN_TABLE ("No such column x in table")
    47,   # UNKNOWN_IDENTIFIER
    60,   # UNKNOWN_TABLE
    81,   # UNKNOWN_DATABASE
})

# The codes ClickHouse's own Kafka Connect sink retries, plus query cancellation.
TRANSIENT_ERROR_CODES = frozenset({
    3,    # UNEXPECTED_END_OF_FILE
    107,  # FILE_DOESNT_EXIST
    159,  # TIMEOUT_EXCEEDED
    164,  # READONLY
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    252,  # TOO_MANY_PARTS
    285,  # TOO_FEW_LIVE_REPLICAS
    286,  # UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE (insert_quorum while a replica is down)
    319,  # UNKNOWN_STATUS_OF_INSERT
    394,  # QUERY_WAS_CANCELLED
    425,  # SYSTEM_ERROR
    999,  # KEEPER_EXCEPTION
})


def classify(exc: BaseException) -> str:
    """One of TRANSIENT, DATA, SCHEMA, UNKNOWN (see the module docstring)."""
    if isinstance(exc, ch_errors.ServerException):
        code = exc.code
        if code in DATA_ERROR_CODES:
            return DATA
        if code in SCHEMA_ERROR_CODES:
            return SCHEMA
        return TRANSIENT if code in TRANSIENT_ERROR_CODES else UNKNOWN
    if isinstance(exc, (ch_errors.NetworkError, ch_errors.SocketTimeoutError, socket.error,
                        EOFError, TimeoutError, ConnectionError)):
        return TRANSIENT
    # Raised by clickhouse-driver while serialising a column: a value that does not fit
    # its ClickHouse type (e.g. 300 into UInt8, a too long FixedString).
    if isinstance(exc, (struct.error, OverflowError, ValueError, TypeError,
                        ch_errors.TypeMismatchError, ch_errors.TooLargeStringSize)):
        return DATA
    # Kafka clients mark the errors worth retrying (the seam's KafkaClientError.retriable;
    # confluent-kafka's KafkaError.retriable() on the error an exception carries).
    if _kafka_retriable(exc):
        return TRANSIENT
    return UNKNOWN


def _kafka_retriable(exc: BaseException) -> bool:
    flag = getattr(exc, "retriable", None)
    if isinstance(flag, bool):
        return flag
    args = getattr(exc, "args", ())
    inner = args[0] if args else None
    check = getattr(inner, "retriable", None)
    if callable(check):
        return bool(check())
    return False
