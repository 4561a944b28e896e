import pytest

from clidash.sqlcomment import append, decode_comment, encode, extract


def test_encode_sorts_keys_and_url_encodes_values():
    assert encode({"route": "product page", "application": "cat'alog"}) == \
        "/*application='cat%27alog',route='product%20page'*/"


@pytest.mark.parametrize("tags", [
    {"application": "catalog", "route": "product_page"},
    {"route": "a/b?c=d&e", "clidash_consistency": "STRONG"},
    {"k": "it's, quoted = 'x'"},
])
def test_round_trip(tags):
    assert extract(append("SELECT 1", tags)) == tags
    assert extract(append("SELECT 1;", tags)).keys() == tags.keys()


def test_escaped_quote_in_a_hand_written_comment():
    assert decode_comment("route='it\\'s'") == {"route": "it's"}


def test_leading_comment_and_last_comment_last_wins():
    sql = "/*route='a',application='svc'*/ SELECT 1 /*route='b'*/"
    assert extract(sql) == {"route": "b", "application": "svc"}


@pytest.mark.parametrize("sql", [
    "SELECT 1", "SELECT 1 /* just a note */", "SELECT '/*' || '*/'", "/* unterminated",
    "SELECT 1 /*route=unquoted*/",
])
def test_no_tags(sql):
    assert extract(sql) == {}


def test_only_a_bounded_suffix_is_scanned():
    sql = "SELECT 1 /*route='early'*/ " + "-- padding\n" * 200 + "SELECT 2"
    assert extract(sql) == {}
