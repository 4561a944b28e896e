"""PostgreSQL WAL positions (LSNs) as plain integers.

An LSN is a 64-bit byte offset into the WAL stream. PostgreSQL prints it as two
32-bit halves in hex, 'XXXXXXXX/YYYYYYYY' (no zero padding: '0/3000028').
Integers compare and subtract directly, so routing and lag math use them; the
text form is for logs, metrics labels and tokens a human reads.
"""
from __future__ import annotations

_HALF = 1 << 32

# XLOG page header sizes (SizeOfXLogShortPHD / SizeOfXLogLongPHD, MAXALIGNed on
# 64-bit builds). The first page of every WAL segment carries the long header.
SHORT_PAGE_HEADER = 24
LONG_PAGE_HEADER = 40
DEFAULT_BLOCK_SIZE = 8192              # wal_block_size
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024  # wal_segment_size


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> 0x16B374D848. Raises ValueError on anything else."""
    high, sep, low = text.strip().partition("/")
    if not sep or not _is_hex32(high) or not _is_hex32(low):
        raise ValueError(f"not a PostgreSQL LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """0x16B374D848 -> '16/B374D848', the way PostgreSQL prints pg_lsn."""
    if not 0 <= lsn < _HALF * _HALF:
        raise ValueError(f"LSN out of range: {lsn!r}")
    return f"{lsn >> 32:X}/{lsn & (_HALF - 1):X}"


def _is_hex32(part: str) -> bool:
    return 0 < len(part) <= 8 and all(c in "0123456789abcdefABCDEF" for c in part)


def insert_position_as_end(lsn: int, block_size: int = DEFAULT_BLOCK_SIZE,
                           segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Map a pg_current_wal_insert_lsn() value to the record-end form replicas report.

    The insert position is where the *next* record will start. When the last
    record ended exactly on a page boundary, that is just past the next page's
    header (boundary + 24, or + 40 at a segment start, e.g. after
    pg_switch_wal()), while a replica that replayed everything reports the
    boundary itself (pg_last_wal_replay_lsn() is the end of the last record).
    Left as is, an idle primary in that state would look ahead of a caught-up
    replica forever. No record ends inside a page header, so moving such a value
    back to the boundary names the same byte position and loses nothing.
    """
    if lsn % segment_size == LONG_PAGE_HEADER:
        return lsn - LONG_PAGE_HEADER
    if lsn % block_size == SHORT_PAGE_HEADER and lsn % segment_size != SHORT_PAGE_HEADER:
        return lsn - SHORT_PAGE_HEADER
    return lsn
