"""A cheap literal-normalising key for SQL text: the classifier's shape cache key.

``shape_key(sql)`` replaces the values of plain string literals and of small
numeric literals with placeholders, and the contents of comments with markers, so
that ``... WHERE aid = 12345`` and ``... WHERE aid = 678`` (or the same query with
a different sqlcommenter comment) share one key. It returns None ("bail out") when
it is not sure, and the caller then keys by the exact text.

Contract (the classifier's safety rests on it): two texts with the same key lex,
in PostgreSQL, into the same token sequence except for the *values* of literals,
and each replaced literal keeps its token class, so both texts parse to the same
tree up to A_Const values (hence the same classification and fingerprint).
Why that holds:

* Everything except replaced tokens is copied verbatim, and each placeholder
  starts with NUL, which never occurs verbatim (NUL in the text means bail), so
  the key cannot be produced by a different token layout.
* The lexing mirrors PostgreSQL's scanner (scan.l) for everything that decides
  where a string, quoted identifier or comment starts and ends: ``'...'`` with
  ``''`` escapes, ``"..."`` with ``""`` escapes, ``--`` to end of line, ``/* */``.
  A quote inside a comment or identifier is never taken as a string start.
* Each normalisation decision depends only on characters kept in the key: the
  neighbouring characters (verbatim, or the edge of a token of the same class)
  and the previous significant character (comments are transparent to it, as in
  PostgreSQL).
* Token classes are kept apart: plain ``'...'`` strings; unsigned integers of at
  most 9 digits (always ICONST, which some grammar rules require); ``d.d``
  decimals (FCONST). Longer integers, exponents, hex/octal/binary, ``1_000``,
  ``.5``-style and anything glued to a letter stay verbatim.

Bail-outs (the value of a literal can change meaning or parse success there):
backslashes (E'' strings, standard_conforming_strings=off), dollar quoting
(any ``$`` that is not a ``$n`` parameter), nested or unterminated comments,
unterminated quotes, NUL or unencodable text, ``UESCAPE`` (the escape char of a
U& literal is itself a literal), more than one statement, and any statement
whose first keyword is not one of SELECT, WITH, VALUES, TABLE, INSERT, UPDATE,
DELETE, MERGE or ``(``; this covers SET/RESET/SHOW/EXPLAIN/BEGIN/START, whose
literals can change what they mean (``SET transaction_read_only = 'off'``,
``EXPLAIN (ANALYZE 0)``).

Literals kept verbatim because their value ends up outside an A_Const (so it
would change the fingerprint) or is checked by the grammar itself:
a number right after ``[`` (array bounds such as ``int[3]``), and any number at
all when ``float``, ``current_time``, ``current_timestamp``, ``localtime`` or
``localtimestamp`` is followed by ``(`` or a comment (``float(p)`` is range
checked while parsing; the others keep ``p`` as a raw typmod).
String literals directly preceded by an identifier character (``E'x'``,
``B'101'``, ``X'ff'``, ``N'x'``, ``date'2020-01-01'``) stay verbatim too: the
prefixed ones are lexed by their own rules.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_INLINE_KEY", "digest_key", "shape_key"]

# Cache keys longer than this are replaced by a 128-bit digest, to bound memory.
MAX_INLINE_KEY = 1024

# Characters PostgreSQL allows inside an unquoted identifier (any non-ASCII
# character counts, as the scanner works on bytes >= 0x80).
_IDENT_CHAR = r"A-Za-z0-9_$\u0080-\U0010FFFF"
_ASCII_IDENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$")
_WHITESPACE = " \t\n\r\f\v"  # PostgreSQL's whitespace; other Unicode spaces are identifier chars

# One pass finds the tokens that matter. Every alternative starts with a literal
# character so that the regex engine can skip ahead on a character set (about
# 30x faster than alternatives starting with a class or a look-behind); digits
# get one alternative each for that reason. A number must not continue an
# identifier (t1) or follow a dot; the look-behind sits after its first digit.
# The lone "/*", "'" and '"' alternatives catch what is left unterminated.
_NUMBER_ALTERNATIVES = "|".join(
    rf"{d}(?<![{_IDENT_CHAR}.]{d})\d*(?:\.\d+)?" for d in "0123456789"
)
_TOKEN = re.compile(
    r"""--[^\n\r]*|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/|/\*|"[^"]*(?:""[^"]*)*"|'[^']*(?:''[^']*)*'|"""
    r"""\$\d*|;|'|"|"""
    + _NUMBER_ALTERNATIVES
)

# float(p) is range checked in the grammar; current_time(p) & co. keep p as a raw
# typmod (outside any A_Const, so it is part of the fingerprint).
_RAW_INT_CONTEXT = re.compile(
    rf"(?<![{_IDENT_CHAR}])(?:float|current_time|current_timestamp|localtime|localtimestamp)"
    rf"[{_WHITESPACE}]*(?:\(|/\*|--)",
    re.IGNORECASE,
)
# First keyword after leading whitespace and (non-nested) comments.
_FIRST_WORD = re.compile(
    rf"(?:[{_WHITESPACE}]+|--[^\n\r]*|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/)*([A-Za-z]+|\()"
)
_SHAPE_KEYED_FIRST_WORDS = ("select", "with", "values", "table", "insert", "update", "delete", "merge", "(")

_STRING = "\x00s"
_INTEGER = "\x00i"
_DECIMAL = "\x00d"
_LINE_COMMENT = "\x00-"
_BLOCK_COMMENT = "\x00c"
_MAX_ICONST_DIGITS = 9  # always below 2**31, so always lexed as an integer constant


def _is_ident_char(c: str) -> bool:
    return c in _ASCII_IDENT_CHARS or c >= "\x80"


def digest_key(text: str) -> bytes:
    """A fixed-size cache key for a long text (bytes, so it never equals a str key)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _starts_shape_keyed(sql: str) -> bool:
    head = sql[:6].lower()
    if not head.startswith(_SHAPE_KEYED_FIRST_WORDS):
        first = _FIRST_WORD.match(sql)  # leading blanks or comments
        head = first.group(1).lower() if first else ""
    # A longer word with one of these prefixes (selective, within) cannot start a
    # statement: a syntax error whatever the literals, so the key stays safe.
    return head.startswith(_SHAPE_KEYED_FIRST_WORDS)


# Texts holding none of these characters and words (and only plain ASCII) have no
# strings, comments, quoted identifiers, parameters, array bounds or escapes:
# numbers are their only literals, so one substitution gives the same key as the
# full scan below.
_NOT_SIMPLE_CHAR = re.compile(r"""['"$/\-\[\\\x00]""")
_NOT_SIMPLE_WORDS = ("float", "current_t", "localtime")
# One alternative per leading digit, as in _TOKEN: lets the engine skip ahead.
_SIMPLE_NUMBER = re.compile("|".join(rf"{d}\d*(?:\.\d+)?(?![A-Za-z0-9_$.])" for d in "0123456789"))
_CONTINUES_TOKEN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$.")


def _simple_number(match: re.Match) -> str:
    text = match.group()
    start = match.start()
    if start and match.string[start - 1] in _CONTINUES_TOKEN:
        return text   # part of an identifier (t1) or after a dot: not a literal
    if "." in text:
        return _DECIMAL
    return text if len(text) > _MAX_ICONST_DIGITS else _INTEGER


def _simple_shape_key(sql: str) -> str | None:
    """The shape key of a text with numbers as its only literals; None when the
    text is not that simple (the full scan decides then)."""
    if not sql.isascii() or _NOT_SIMPLE_CHAR.search(sql) is not None:
        return None
    lowered = sql.lower()
    if any(word in lowered for word in _NOT_SIMPLE_WORDS):
        return None
    semicolon = sql.find(";")
    if semicolon >= 0 and (sql[semicolon:].strip(_WHITESPACE + ";") or sql.count(";") > 1):
        return None
    if not lowered.lstrip(_WHITESPACE).startswith(_SHAPE_KEYED_FIRST_WORDS):
        return None
    key = _SIMPLE_NUMBER.sub(_simple_number, sql)
    return key if len(key) <= MAX_INLINE_KEY else digest_key(key)


def shape_key(sql: str) -> str | bytes | None:
    """Return the literal-normalised key of ``sql``, or None to key by exact text."""
    simple = _simple_shape_key(sql)
    if simple is not None:
        return simple
    return _full_shape_key(sql)


def _full_shape_key(sql: str) -> str | bytes | None:
    if "\\" in sql or "\x00" in sql:
        return None
    if not sql.isascii():
        try:
            sql.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the parser would reject the text
            return None
    if not _starts_shape_keyed(sql):
        return None
    if "&" in sql and "uescape" in sql.lower():
        return None  # U&'...' UESCAPE '!': one literal is the escape character of another

    parts: list[str] = []
    pos = 0  # end of the text already copied into parts
    last_sig = ""  # last significant character before the token; comments do not count
    after_semicolon = False
    numbers_verbatim = None  # decided at the first number
    for m in _TOKEN.finditer(sql):
        start = m.start()
        end = m.end()
        c = sql[start]
        if start > pos:
            gap = sql[pos:start].rstrip(_WHITESPACE)
            if gap:
                if after_semicolon:
                    return None  # a second statement
                last_sig = gap[-1]
        if after_semicolon and c not in "-/;":
            return None  # a second statement
        if "0" <= c <= "9":
            following = sql[end : end + 1]
            if numbers_verbatim is None:
                numbers_verbatim = _has_raw_int_context(sql)
            if (
                numbers_verbatim
                or last_sig == "["
                or (following and (following == "." or _is_ident_char(following)))
                or (end - start > _MAX_ICONST_DIGITS and "." not in m.group())
            ):
                literal = m.group()
            else:
                literal = _DECIMAL if "." in m.group() else _INTEGER
            last_sig = "0"
        elif c == "'":
            if end - start == 1:
                return None  # unterminated
            if start and _is_ident_char(sql[start - 1]):
                literal = m.group()  # E'', B'', X'', N'', type'...': own lexing rules, verbatim
            else:
                literal = _STRING
            last_sig = "'"
        elif c == "-":
            literal = _LINE_COMMENT  # comments are transparent to last_sig, as in PostgreSQL
        elif c == "/":
            # An unterminated comment, or one that nests ("/*" inside, even overlapping
            # the close as in "/*/"), is beyond this lexer.
            if end - start == 2 or "/*" in sql[start + 2 : end]:
                return None
            literal = _BLOCK_COMMENT
        elif c == ";":
            after_semicolon = True
            literal = ";"
            last_sig = ";"
        elif c == '"':
            if end - start == 1:
                return None  # unterminated
            literal = m.group()
            last_sig = '"'
        else:  # "$"
            if start and _is_ident_char(sql[start - 1]):
                literal = m.group()  # inside an identifier such as a$b or a$1
            elif end - start == 1 or (end < len(sql) and _is_ident_char(sql[end])):
                return None  # dollar quoting, or junk after a parameter
            else:
                literal = m.group()  # a $n parameter
            last_sig = "0"
        parts.append(sql[pos:start])
        parts.append(literal)
        pos = end
    tail = sql[pos:]
    if after_semicolon and tail.strip(_WHITESPACE):
        return None
    parts.append(tail)
    key = "".join(parts)
    return key if len(key) <= MAX_INLINE_KEY else digest_key(key)


def _has_raw_int_context(sql: str) -> bool:
    lowered = sql.lower()
    return (
        "float" in lowered or "current_t" in lowered or "localtime" in lowered
    ) and _RAW_INT_CONTEXT.search(sql) is not None
