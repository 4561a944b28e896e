"""The policy model: JSON as DESIGN section 5 writes it, validation, strength order, floors."""
from __future__ import annotations

import json

import pytest

from clidash.policy import (Mode, ModeSpec, PolicyError, RoutePolicy, ServicePolicy, apply_floor, is_weaker,
                            stronger)

DESIGN_EXAMPLE = ('{"mode":"BOUNDED","max_lag_ms":250,"source":"optimizer","reason":"...",'
                  '"updated_at":"2025-12-04T10:15:30.123Z"}')


def spec(text: str) -> ModeSpec:
    return ModeSpec.parse(text)


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("text", [
    DESIGN_EXAMPLE,
    '{"mode":"EVENTUAL","source":"operator","reason":"catalog pages tolerate staleness",'
    '"updated_at":"2025-12-04T10:15:30Z"}',
    '{"mode":"STRONG","source":"operator","reason":"","updated_at":"2025-12-04T10:15:30+02:00"}',
    '{"mode":"READ_YOUR_WRITES","source":"optimizer","reason":"ryw exposure 3%","updated_at":"2025-12-04T10:15:30.5Z"}',
    '{"mode":"BOUNDED","max_lag_ms":0.5,"source":"optimizer","reason":"tight","updated_at":"2025-12-04T10:15:30Z"}',
    '{"mode":"EVENTUAL","source":"operator","reason":"späte Lesezugriffe","updated_at":"2025-12-04T10:15:30Z"}',
])
def test_json_round_trips_byte_for_byte(text):
    assert RoutePolicy.from_json(text).to_json() == text
    assert RoutePolicy.from_json(text.encode()).to_json() == text


def test_design_example_fields():
    policy = RoutePolicy.from_json(DESIGN_EXAMPLE)
    assert policy.spec == ModeSpec(Mode.BOUNDED, 250.0)
    assert (policy.mode, policy.max_lag_ms) == (Mode.BOUNDED, 250.0)
    assert (policy.source, policy.reason, policy.updated_at) == ("optimizer", "...", "2025-12-04T10:15:30.123Z")


def test_built_policy_serialises_in_contract_order():
    policy = RoutePolicy(spec("BOUNDED:250"), source="optimizer", reason="...", updated_at="2025-12-04T10:15:30.123Z")
    assert policy.to_json() == DESIGN_EXAMPLE
    assert list(json.loads(policy.to_json())) == ["mode", "max_lag_ms", "source", "reason", "updated_at"]
    assert "max_lag_ms" not in policy.__class__(spec("EVENTUAL")).to_json()


def test_new_policy_is_stamped_with_rfc3339_utc():
    stamp = RoutePolicy(spec("STRONG")).updated_at
    assert stamp.endswith("Z") and "T" in stamp
    RoutePolicy.from_json(RoutePolicy(spec("STRONG")).to_json())  # the stamp validates


def test_hand_written_minimal_value_is_accepted():
    policy = RoutePolicy.from_json('{"mode":"eventual"}')
    assert policy.spec == spec("EVENTUAL") and policy.source == "" and policy.updated_at == ""


@pytest.mark.parametrize("text, fragment", [
    ('{"mode":"SOMETIMES"}', "unknown consistency mode 'SOMETIMES'"),
    ('{"mode":"BOUNDED"}', 'BOUNDED needs "max_lag_ms"'),
    ('{"mode":"BOUNDED","max_lag_ms":-1}', "max_lag_ms must be >= 0"),
    ('{"mode":"BOUNDED","max_lag_ms":"250"}', "max_lag_ms must be a number"),
    ('{"mode":"BOUNDED","max_lag_ms":true}', "max_lag_ms must be a number"),
    ('{"mode":"EVENTUAL","max_lag_ms":250}', "max_lag_ms only applies to BOUNDED"),
    ('{"max_lag_ms":250}', 'needs a "mode" string'),
    ('{"mode":"STRONG","updated_at":"yesterday"}', "RFC 3339"),
    ('{"mode":"STRONG","updated_at":"2025-12-04T10:15:30"}', "RFC 3339"),  # no zone
    ('{"mode":"STRONG","reason":42}', "reason must be a string"),
    ('["STRONG"]', "must be a JSON object"),
    ('{"mode":"STRONG"', "not valid JSON"),
    ("", "not valid JSON"),
])
def test_invalid_values_are_refused_with_a_clear_message(text, fragment):
    with pytest.raises(PolicyError, match=None) as info:
        RoutePolicy.from_json(text)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- ModeSpec text (unchanged behaviour)


@pytest.mark.parametrize("text, expected", [
    ("STRONG", "STRONG"), ("read_your_writes", "READ_YOUR_WRITES"), ("BOUNDED:250", "BOUNDED:250"),
    ("bounded:0.5", "BOUNDED:0.5"), ("BOUNDED:1000000", "BOUNDED:1000000"), ("EVENTUAL", "EVENTUAL"),
])
def test_mode_spec_text_round_trip(text, expected):
    assert str(spec(text)) == expected
    assert spec(str(spec(text))) == spec(text)


@pytest.mark.parametrize("text", ["BOUNDED", "BOUNDED:x", "BOUNDED:-1", "BOUNDED:inf", "STRONG:5", "NOPE"])
def test_mode_spec_rejects(text):
    with pytest.raises(PolicyError):
        spec(text)


# --------------------------------------------------------------------------- strength order


ORDER = ["STRONG", "READ_YOUR_WRITES", "BOUNDED:0", "BOUNDED:100", "BOUNDED:250", "EVENTUAL"]


@pytest.mark.parametrize("i", range(len(ORDER)))
@pytest.mark.parametrize("j", range(len(ORDER)))
def test_strength_order(i, j):
    a, b = spec(ORDER[i]), spec(ORDER[j])
    assert is_weaker(a, b) == (i > j)
    assert stronger(a, b) == spec(ORDER[min(i, j)])


@pytest.mark.parametrize("policy, floor, expected", [
    ("EVENTUAL", None, "EVENTUAL"),
    ("EVENTUAL", "BOUNDED:500", "BOUNDED:500"),
    ("BOUNDED:1000", "BOUNDED:500", "BOUNDED:500"),
    ("BOUNDED:100", "BOUNDED:500", "BOUNDED:100"),
    ("BOUNDED:100", "READ_YOUR_WRITES", "READ_YOUR_WRITES"),
    ("STRONG", "EVENTUAL", "STRONG"),
    ("READ_YOUR_WRITES", "READ_YOUR_WRITES", "READ_YOUR_WRITES"),
])
def test_apply_floor_returns_the_stronger(policy, floor, expected):
    assert apply_floor(spec(policy), None if floor is None else spec(floor)) == spec(expected)


# --------------------------------------------------------------------------- a service's policy


def route_json(mode: str) -> str:
    return RoutePolicy(spec(mode), updated_at="2025-12-04T10:15:30Z").to_json()


def test_service_policy_lookup_route_then_star_then_default():
    service = ServicePolicy.from_hashes("catalog", {
        "_version": "7", "*": route_json("BOUNDED:250"), "product_page": route_json("EVENTUAL")})
    assert service.version == 7
    assert service.mode_for("product_page") == spec("EVENTUAL")
    assert service.mode_for("checkout") == spec("BOUNDED:250")
    assert ServicePolicy("x").mode_for("any", spec("STRONG")) == spec("STRONG")
    assert ServicePolicy("x").mode_for("any") is None


def test_floors_route_then_star_and_never_undercut():
    service = ServicePolicy.from_hashes(
        "catalog",
        {"_version": "3", "*": route_json("EVENTUAL"), "cart": route_json("EVENTUAL"), "feed": route_json("EVENTUAL")},
        {"*": "BOUNDED:1000", "cart": "READ_YOUR_WRITES", "feed": "EVENTUAL"})
    default = spec("EVENTUAL")
    assert service.effective_mode_for("cart", default) == spec("READ_YOUR_WRITES")
    assert service.effective_mode_for("other", default) == spec("BOUNDED:1000")   # the `*` floor
    assert service.effective_mode_for("feed", default) == spec("EVENTUAL")        # its own floor replaces `*`
    compiled = service.compile(default)
    for route in ("cart", "other", "feed", "*"):
        assert compiled.mode_for(route) == service.effective_mode_for(route, default)


def test_floor_applies_to_routes_missing_from_the_policy():
    service = ServicePolicy.from_hashes("s", {"_version": "1"}, {"checkout": "STRONG"})
    compiled = service.compile(spec("EVENTUAL"))
    assert compiled.mode_for("checkout") == spec("STRONG")
    assert compiled.mode_for("browse") == spec("EVENTUAL")


def test_unreadable_entries_serve_strong_and_are_reported():
    service = ServicePolicy.from_hashes("s", {"_version": "2", "*": route_json("EVENTUAL"), "bad": '{"mode":"??"}'},
                                        {"worse": "SOMETIMES"})
    compiled = service.compile(spec("EVENTUAL"))
    assert compiled.mode_for("bad") == spec("STRONG")
    assert compiled.mode_for("worse") == spec("STRONG")
    assert compiled.mode_for("fine") == spec("EVENTUAL")
    assert "unknown consistency mode" in service.invalid_routes["bad"]
    assert "worse" in service.invalid_floors


def test_unreadable_version_is_reported_not_raised():
    service = ServicePolicy.from_hashes("s", {"_version": "x"})
    assert service.version == 0 and "_version" in service.invalid_routes


def test_floors_only_keeps_floors_and_drops_routes():
    service = ServicePolicy.from_hashes("s", {"_version": "4", "*": route_json("EVENTUAL")}, {"*": "BOUNDED:50"})
    fallback = service.floors_only()
    assert fallback.version == 0 and not fallback.routes
    assert fallback.compile(spec("EVENTUAL")).mode_for("x") == spec("BOUNDED:50")
    assert fallback.compile(spec("STRONG")).mode_for("x") == spec("STRONG")
