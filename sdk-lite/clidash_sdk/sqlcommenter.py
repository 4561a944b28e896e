"""sqlcommenter tags: the codec shared by the SDK (encode) and the proxy (decode).

`SELECT ... /*application='catalog',route='product_page'*/`: keys sorted,
keys and values URL-encoded, values single-quoted with `'` escaped as `\\'`.
Zero dependencies beyond the standard library, so the SDK can ship this file
as is. The proxy reads the last comment and a leading one, looking only at a
bounded suffix and prefix of the text, and never rewrites the SQL.
"""
from __future__ import annotations

import re
from urllib.parse import quote, unquote

__all__ = ["encode", "append", "append_comment", "decode_comment", "extract",
           "SERVICE_KEY", "ROUTE_KEY", "CONSISTENCY_KEY", "SCAN_BYTES"]

# Keys the proxy acts on.
SERVICE_KEY = "application"
ROUTE_KEY = "route"
CONSISTENCY_KEY = "clidash_consistency"

SCAN_BYTES = 1024          # how far from either end of a statement tags are looked for
_PAIR = re.compile(r"\s*([^=,\s]+)\s*=\s*'((?:[^'\\]|\\.)*)'\s*(?:,|$)")


def encode(tags: dict) -> str:
    """The comment for tags (empty dict -> empty string)."""
    if not tags:
        return ""
    pairs = (f"{quote(str(k), safe='')}='{quote(str(v), safe='')}'" for k, v in sorted(tags.items()))
    return "/*" + ",".join(pairs) + "*/"


def append(sql: str, tags: dict) -> str:
    """sql with the tags comment appended (before a trailing semicolon, as sqlcommenter does)."""
    return append_comment(sql, encode(tags))


def append_comment(sql: str, comment: str) -> str:
    """sql with an already encoded comment appended, as `append` does. When the last
    line may end in a `--` (or MySQL `#`) line comment, the comment goes on a line of
    its own, so that it is not swallowed by that line comment, and the text before it
    is left as it was."""
    if not comment:
        return sql
    stripped = sql.rstrip()
    last_line = stripped[stripped.rfind("\n") + 1:]
    if "--" in last_line or "#" in last_line:
        return stripped + "\n" + comment
    if stripped.endswith(";"):
        return stripped[:-1] + " " + comment + ";"
    return stripped + " " + comment


def decode_comment(body: str) -> dict:
    """Tags in one comment body (between /* and */); {} when it is not a tag list."""
    tags = {}
    pos = 0
    body = body.strip()
    while pos < len(body):
        match = _PAIR.match(body, pos)
        if match is None:
            return {}
        tags[unquote(match.group(1))] = unquote(match.group(2).replace("\\'", "'"))
        pos = match.end()
    return tags


def extract(sql: str) -> dict:
    """Tags from the last comment of sql and from a leading one (the last wins on a
    key both have). Cheap when there is no comment: one substring search."""
    tail = sql[-SCAN_BYTES:]
    end = tail.rfind("*/")
    if end < 0:
        return {}
    tags = {}
    head = sql[:SCAN_BYTES].lstrip()
    if head.startswith("/*"):
        close = head.find("*/")
        if close > 0:
            tags.update(decode_comment(head[2:close]))
    start = tail.rfind("/*", 0, end)
    if start >= 0:
        tags.update(decode_comment(tail[start + 2:end]))
    return tags
