"""SCIM value filters evaluated in Python on the values of one complex attribute (PATCH paths)."""

import operator
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from didmos_scim.evaluate import matches, select
from didmos_scim.filters import AttrPath, Comparison, InvalidFilter, Not, ValuePath, parse
from didmos_scim.mapping import GROUP_SCHEMA, USER, USER_SCHEMA, Attribute

EMAILS = USER_SCHEMA.attribute("emails")
MEMBERS = GROUP_SCHEMA.attribute("members")
# integer, decimal, dateTime, case-exact and binary sub-attributes, which the default mappings do not have
EVENTS = Attribute("events", "complex", multi_valued=True, sub_attributes=(
    Attribute("count", "integer"),
    Attribute("weight", "decimal"),
    Attribute("at", "dateTime"),
    Attribute("done", "boolean"),
    Attribute("code", "string", case_exact=True),
    Attribute("blob", "binary"),
    Attribute("tags", "string", multi_valued=True),
))

MAILS = [
    {"value": "ann@x.org", "type": "work", "primary": True},
    {"value": "ann@home.org", "type": "home"},
    {"value": "Ann.Smith@X.org", "type": "Work"},
    {"value": "bob@y.org", "type": "other", "primary": False},
]


def chosen(text, items=MAILS, attribute=EMAILS, **kwargs):
    return select(parse(text), items, attribute, **kwargs)


def test_the_inner_filter_selects_values_of_the_attribute():
    assert chosen('type eq "work" and value co "@x"') == [0, 2]
    assert matches(parse('type eq "work" and value co "@x"'), MAILS[0], EMAILS)
    assert not matches(parse('type eq "work" and value co "@x"'), MAILS[1], EMAILS)


def test_members_are_selected_by_id():
    members = [{"value": "2819c223", "display": "Ann"}, {"value": "902c246b", "display": "Bob"}]
    assert chosen('value eq "902c246b"', members, MEMBERS) == [1]
    assert chosen('display sw "a"', members, MEMBERS) == [0]
    assert chosen('value eq "nobody"', members, MEMBERS) == []


@pytest.mark.parametrize("text, expected", [
    ('value eq "ann@x.org"', [0]),
    ('value ne "ann@x.org"', [1, 2, 3]),
    ('value co "ann"', [0, 1, 2]),
    ('value sw "ann@"', [0, 1]),
    ('value ew ".org"', [0, 1, 2, 3]),
    ('value gt "ann@x.org"', [3]),        # by code point, folded: "ann.smith@x.org" < "ann@x.org" as "." < "@"
    ('value ge "ann@x.org"', [0, 3]),
    ('value lt "ann@x.org"', [1, 2]),
    ('value le "ann@x.org"', [0, 1, 2]),
    ('primary pr', [0, 3]),
])
def test_every_operator_on_strings(text, expected):
    assert chosen(text) == expected


def test_strings_compare_case_folded_unless_case_exact():
    assert chosen('VALUE eq "ANN.SMITH@x.ORG"') == [2]
    assert chosen('type eq "WORK"') == [0, 2]
    assert chosen('value co "SMITH"') == [2]
    assert select(parse('value eq "STRASSE"'), [{"value": "straße"}], EMAILS) == [0]
    codes = [{"code": "AbC"}, {"code": "abc"}, {"code": "ABD"}]
    assert chosen('code eq "abc"', codes, EVENTS) == [1]
    assert chosen('code ne "abc"', codes, EVENTS) == [0, 2]
    assert chosen('code sw "A"', codes, EVENTS) == [0, 2]
    assert chosen('code gt "AbC"', codes, EVENTS) == [1]  # code points: "b" (0x62) > "B" (0x42)


def test_and_binds_tighter_than_or_and_parentheses_group():
    assert chosen('type eq "home" or type eq "work" and value co "smith"') == [1, 2]
    assert chosen('(type eq "home" or type eq "work") and value co "smith"') == [2]
    assert chosen('not (type eq "work")') == [1, 3]
    assert chosen('not (type eq "work" or primary eq false) and value ew ".org"') == [1]
    assert chosen('not (not (value co "bob"))') == [3]


def test_presence_needs_a_non_empty_value():
    items = [{"value": "a"}, {}, {"value": None}, {"value": ""}, {"value": []}, {"value": {}},
             {"value": ["a"]}, {"value": False}, {"value": 0}]
    assert chosen("value pr", items) == [0, 6, 7, 8]
    assert chosen("value eq null", items) == [1, 2, 3, 4, 5]
    assert chosen("not (value pr)", items) == chosen("value eq null", items)


def test_absent_values_match_only_ne_and_eq_null():
    for text in ['value eq "a"', 'value co ""', 'value sw ""', 'value gt ""', 'value le "zzz"']:
        assert chosen(text, [{}]) == [], text
    assert chosen('value ne "a"', [{}, {"value": None}]) == [0, 1]
    assert chosen('value co ""', [{"value": "a"}]) == [0]  # every present value contains ""


def test_booleans_compare_as_booleans():
    assert chosen("primary eq true") == [0]
    assert chosen("primary eq false") == [3]
    assert chosen("primary ne true") == [1, 2, 3]  # no primary is "not true"
    assert chosen('primary eq "True"') == [0]      # as big clients send it
    assert chosen("primary eq true", [{"primary": "TRUE"}, {"primary": "yes"}, {"primary": 1}]) == [0]
    with pytest.raises(InvalidFilter, match="emails.primary is a boolean; compare it with true or false"):
        chosen('primary eq "True"', tolerate_case=False)
    with pytest.raises(InvalidFilter, match="emails.primary is a boolean"):
        chosen("primary eq 1")


@pytest.mark.parametrize("op", ["gt", "ge", "lt", "le", "co", "sw", "ew"])
def test_booleans_have_no_order(op):
    with pytest.raises(InvalidFilter, match=f"emails.primary is of type boolean; {op} does not apply to it "
                                            r"\(use eq, ne, pr\)"):
        chosen(f"primary {op} true")


def test_numbers_compare_numerically():
    items = [{"count": 9, "weight": 1.5}, {"count": 10, "weight": 2}, {"count": 100, "weight": 0.1}, {}]
    assert chosen("count gt 9", items, EVENTS) == [1, 2]  # not "9" > "10" as text
    assert chosen("count le 10", items, EVENTS) == [0, 1]
    assert chosen("count ne 10", items, EVENTS) == [0, 2, 3]
    assert chosen("weight eq 1.50", items, EVENTS) == [0]
    assert chosen("weight eq 2.0", items, EVENTS) == [1]
    assert chosen("weight eq 0.1", items, EVENTS) == [2]  # the float 0.1 as written, not its binary value
    assert chosen("weight lt 1e0", items, EVENTS) == [2]
    assert chosen("weight ge 2", items, EVENTS) == [1]
    assert chosen("count eq 9", [{"count": "9"}, {"count": True}], EVENTS) == []  # not numbers


def test_numbers_must_be_written_as_numbers():
    with pytest.raises(InvalidFilter, match='events.count is an integer; write a whole number without quotes, not "9"'):
        chosen('count eq "9"', [], EVENTS)
    with pytest.raises(InvalidFilter, match="events.count is an integer; .* not 9.5"):
        chosen("count gt 9.5", [], EVENTS)
    with pytest.raises(InvalidFilter, match="events.weight is a decimal; write a number without quotes, not true"):
        chosen("weight eq true", [], EVENTS)
    with pytest.raises(InvalidFilter, match="events.count is of type integer; co does not apply"):
        chosen("count co 1", [], EVENTS)


STAMPS = [{"at": "2011-05-13T04:42:34Z"}, {"at": "2011-05-13T06:42:35+02:00"}, {"at": "2011-05-13T00:42:34-04:00"},
          {"at": "2011-05-13T04:42:34.5Z"}, {"at": "2011-05-13T04:42:34"}, {"at": "yesterday"}, {}]


@pytest.mark.parametrize("text, expected", [
    ('at eq "2011-05-13T06:42:34+02:00"', [0, 2]),
    ('at eq "2011-05-13T04:42:34.000Z"', [0, 2]),
    ('at ne "2011-05-13T04:42:34Z"', [1, 3, 4, 5, 6]),
    ('at gt "2011-05-13T04:42:34Z"', [1, 3]),  # a fraction is later than the whole second
    ('at ge "2011-05-13T04:42:34.5Z"', [1, 3]),
    ('at lt "2011-05-13T04:42:34.5Z"', [0, 2]),
    ('at le "2011-05-13T05:42:35+01:00"', [0, 1, 2, 3]),
    ("at pr", [0, 1, 2, 3, 4, 5]),
])
def test_datetimes_compare_as_instants(text, expected):
    # index 4 has no time zone and 5 is no date: neither equals nor orders against anything
    assert chosen(text, STAMPS, EVENTS) == expected


@pytest.mark.parametrize("value", ['"2011-05-13T04:42:34"', '"2011-02-30T00:00:00Z"', '"today"', "20110513"])
def test_datetimes_must_be_rfc3339_with_time_zone(value):
    with pytest.raises(InvalidFilter, match="events.at is a dateTime"):
        chosen(f"at eq {value}", STAMPS, EVENTS)


offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
instants = st.builds(lambda d, tz: d.replace(tzinfo=timezone.utc).astimezone(tz),
                     st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31)), offsets)


@settings(max_examples=300, deadline=None)
@given(a=instants, b=instants | instants.map(lambda d: d.astimezone(timezone.utc)),
       op=st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"]))
def test_datetimes_order_as_the_instants_they_name(a, b, op):
    compare = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "ge": operator.ge, "lt": operator.lt,
               "le": operator.le}[op]
    node = Comparison(AttrPath(None, "at"), op, b.isoformat())
    assert matches(node, {"at": a.isoformat()}, EVENTS) is compare(a, b)


def test_multi_valued_sub_attributes_match_when_one_element_does():
    items = [{"tags": ["red", "Blue"]}, {"tags": ["green"]}, {"tags": []}]
    assert chosen('tags eq "blue"', items, EVENTS) == [0]
    assert chosen('tags ne "blue"', items, EVENTS) == [1, 2]
    assert chosen("tags pr", items, EVENTS) == [0, 1]


def test_every_spelling_of_a_sub_attribute_path_is_accepted():
    expected = [0, 2]
    assert chosen('type eq "work"') == expected                                 # just the inner text
    assert chosen('emails.type eq "work"') == expected                          # prefixed, as _rebase gives it
    assert chosen(f'{USER}:emails.type eq "work"') == expected                  # with the schema URN
    assert chosen('emails[type eq "work"]') == expected                         # the whole value path
    assert chosen('Emails[TYPE eq "work"]') == expected                         # names are case-insensitive
    assert chosen('value eq "a@x"', [{"Value": "a@x"}, {"VALUE": "b@x"}]) == [0]  # item keys too


def test_unknown_sub_attributes_are_named():
    with pytest.raises(InvalidFilter, match="unknown attribute 'emails.kind': emails has no sub-attribute 'kind' "
                                            r"\(it has value, type, primary, display\)") as raised:
        chosen('kind eq "work"')
    assert raised.value.position == 0
    with pytest.raises(InvalidFilter, match="'name.givenName' is not a sub-attribute of emails"):
        chosen('name.givenName eq "Ann"')
    with pytest.raises(InvalidFilter, match=f"'{USER}:type' is not a sub-attribute of emails"):
        chosen(f'{USER}:type eq "work"')


def test_the_filter_is_checked_before_any_value():
    with pytest.raises(InvalidFilter, match="emails.kind"):
        chosen('kind eq "work"', items=[])
    with pytest.raises(InvalidFilter, match="emails.kind"):  # even where "or" would not get to it
        chosen('type pr or kind eq "work"')


def test_value_paths_do_not_nest():
    nested = ValuePath(AttrPath(None, "emails"), Not(ValuePath(AttrPath(None, "emails"), parse("value pr"))))
    with pytest.raises(InvalidFilter, match=r"value paths cannot be nested inside emails\[...\]"):
        select(nested, MAILS, EMAILS)
    with pytest.raises(InvalidFilter, match=r"members\[...\] does not filter values of emails"):
        chosen('members[value eq "x"]')


def test_null_compares_only_with_eq():
    with pytest.raises(InvalidFilter, match="null compares only with eq .* for ne null use 'emails.value pr'"):
        chosen("value ne null")
    with pytest.raises(InvalidFilter, match="for gt null"):
        chosen("value gt null")


def test_values_must_fit_the_sub_attribute_type():
    with pytest.raises(InvalidFilter, match="emails.value is a string; write the value in double quotes, not 5"):
        chosen("value eq 5")
    with pytest.raises(InvalidFilter, match=r"events.blob is of type binary; eq does not apply to it \(use pr\)"):
        chosen('blob eq "AAAA"', [], EVENTS)
    assert chosen("blob pr", [{"blob": "AAAA"}, {}], EVENTS) == [0]


def test_attributes_without_sub_attributes_have_no_value_filter():
    with pytest.raises(InvalidFilter, match=r"userName has no sub-attributes, so it has no \[...\] value filter"):
        chosen('value eq "x"', [], USER_SCHEMA.attribute("userName"))


def test_items_must_be_mappings():
    with pytest.raises(TypeError, match="not str"):
        chosen('value eq "x"', ["x"])
