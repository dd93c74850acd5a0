"""SCIM filters: parsing (RFC 7644 3.4.2.2) and translation into LDAP filters, down to a real slapd."""

import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import ldap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from didmos_ldap import filters as lf
from didmos_ldap.filters import all_of, any_of, contains, ends_with, eq, ge, le, not_, present, starts_with
from didmos_scim.filters import (
    MAX_DEPTH, And, AttrPath, Comparison, InvalidFilter, Not, Or, Presence, ValuePath, parse, to_ldap,
)
from didmos_scim.mapping import DEFAULT_MAPPINGS, ENTERPRISE, LUI, USER, Attribute

USERS = DEFAULT_MAPPINGS["User"]
GROUPS = DEFAULT_MAPPINGS["Group"]
# integer, decimal and dateTime attributes, which the default mappings do not have
EXTENDED = (USERS.with_attribute(USER, Attribute("shoeSize", "integer", "didmosShoeSize"))
            .with_attribute(USER, Attribute("height", "decimal", "didmosHeight"))
            .with_attribute(USER, Attribute("hired", "dateTime", "didmosHired"))
            .with_attribute(USER, Attribute("photo", "binary", "jpegPhoto")))


def ldap_of(text, mapping=USERS, **kwargs):
    return to_ldap(text, mapping, **kwargs)


def gt(attr, value):
    return all_of(ge(attr, value), not_(eq(attr, value)))


def lt(attr, value):
    return all_of(le(attr, value), not_(eq(attr, value)))


def p(name, sub=None, urn=None):
    return AttrPath(urn, name, sub)


# --- parsing -----------------------------------------------------------------------------------------

def test_and_binds_tighter_than_or_and_parentheses_group():
    a, b, c = (Comparison(p(n), "eq", 1) for n in "abc")
    assert parse("a eq 1 or b eq 2 and c eq 3") == Or((a, And((Comparison(p("b"), "eq", 2),
                                                                  Comparison(p("c"), "eq", 3)))))
    assert parse("(a eq 1 or b eq 1) and c eq 1") == And((Or((a, b)), c))
    assert parse("a eq 1 and b eq 1 and c eq 1") == And((a, b, c))
    assert parse("not (a eq 1) or b eq 1") == Or((Not(a), b))
    assert parse("((a eq 1))") == a


def test_keywords_are_case_insensitive_and_values_are_json():
    tree = parse('userName EQ "x\\"y\\u00e9" AND active Eq TRUE Or title PR aNd x Ne NULL or n lt -1.5e3')
    assert tree == Or((
        And((Comparison(p("userName"), "eq", 'x"yé'), Comparison(p("active"), "eq", True))),
        And((Presence(p("title")), Comparison(p("x"), "ne", None))),
        Comparison(p("n"), "lt", Decimal("-1.5e3")),
    ))
    assert parse("x eq 42").value == 42 and isinstance(parse("x eq 42").value, int)
    assert parse("NOT(x pr)") == Not(Presence(p("x")))


def test_attribute_paths_with_schema_urns_and_sub_attributes():
    assert parse(f"{USER}:name.familyName pr").path == AttrPath(USER, "name", "familyName")
    assert parse(f"{ENTERPRISE}:employeeNumber pr").path == AttrPath(ENTERPRISE, "employeeNumber")
    assert parse("members.$ref pr").path == AttrPath(None, "members", "$ref")
    tree = parse('emails[type eq "work" and not (value co "@x")]')
    assert tree == ValuePath(p("emails"), And((Comparison(p("type"), "eq", "work"),
                                               Not(Comparison(p("value"), "co", "@x")))))


@pytest.mark.parametrize("text, why, position", [
    ("", "empty", 0),
    ("   ", "empty", 0),
    ('userName eq "x', "without closing", 12),
    ('userName eq bjensen', "a string in double quotes", 12),
    ("userName eq 'x'", "a string in double quotes", 12),
    ('userName equals "x"', "expected an operator", 9),
    ('userName eq "x" and', "expected an attribute path", 19),
    ('userName eq "x" userName pr', "expected 'and', 'or'", 16),
    ('(userName pr', "expected ')' to close the '(' at position 0", 12),
    ('userName pr)', "without its '('", 11),
    ('not userName pr', "'not' needs a filter in parentheses", 4),
    ('1abc pr', "not an attribute path", 0),
    ('name.givenName.x pr', "not an attribute path", 0),
    (':userName pr', "not an attribute path", 0),
    ('emails[type eq "work"].value eq "x"', "PATCH path, not a filter", 22),
    ('emails[value[x pr]]', "cannot be nested", 12),
    ('emails[emails.type eq "work"]', "name sub-attributes of emails alone", 7),
    ('emails.value[type pr]', "not the sub-attribute", 12),
    ('userName eq 007', "a string in double quotes, true, false, null or a number", 12),
    ('userName eq "\\x"', "not a valid JSON string", 12),
    ('userName eq "\\ud800"', "not a valid JSON string", 12),  # a lone surrogate cannot be sent to LDAP
    ("x eq 1e999999999", "out of range", 5),
])
def test_syntax_errors_say_what_and_where(text, why, position):
    with pytest.raises(InvalidFilter, match="invalid filter: .*" + re.escape(why)) as caught:
        parse(text)
    assert caught.value.position == position and caught.value.detail == {"position": position}
    assert caught.value.status == 400 and caught.value.scim_type == "invalidFilter"
    assert f"(at position {position} of the filter)" in caught.value.message


def test_length_and_depth_are_bounded():
    nested = "(" * MAX_DEPTH + "userName pr" + ")" * MAX_DEPTH
    assert parse(nested) == Presence(p("userName"))
    with pytest.raises(InvalidFilter, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse("(" + nested + ")")
    with pytest.raises(InvalidFilter, match="4097 characters is longer than the 4096 allowed"):
        parse("userName pr" + " " * 4086)
    assert parse("userName pr" + " " * 4086, max_length=5000) == Presence(p("userName"))
    started = time.monotonic()
    for hostile in ("(" * 10000 + "userName pr" + ")" * 10000, "not (" * 10000 + "x pr" + ")" * 10000,
                    "(" * 10**6):
        with pytest.raises(InvalidFilter, match="characters is longer than"):
            parse(hostile)
        with pytest.raises(InvalidFilter, match="nested deeper"):
            parse(hostile, max_length=10**7)
    with pytest.raises(InvalidFilter, match="value paths cannot be nested"):
        parse("x[" * 10000, max_length=10**7)
    assert time.monotonic() - started < 2
    long_chain = " and ".join(f'userName ne "{i}"' for i in range(1000))  # long but flat: no recursion per part
    assert len(ldap_of(long_chain, max_length=len(long_chain)).parts) == 1000


def test_trees_written_back_parse_to_the_same_tree():
    for text in ('userName eq "a" or (title pr and not (emails[type eq "work" or value ew ".de"]))',
                 f'{ENTERPRISE}:employeeNumber gt "7" and x eq 1.50 and y ne null and z eq false'):
        tree = parse(text)
        assert parse(str(tree)) == tree


# --- translation: operators and types ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('userName eq "bjensen"', eq("uid", "bjensen")),
    ('userName ne "bjensen"', not_(eq("uid", "bjensen"))),
    ('name.familyName co "O\'Malley"', contains("sn", "O'Malley")),
    ('userName sw "J"', starts_with("uid", "J")),
    ('displayName ew "son"', ends_with("displayName", "son")),
    ('userName gt "m"', gt("uid", "m")),
    ('userName ge "m"', ge("uid", "m")),
    ('userName lt "m"', lt("uid", "m")),
    ('userName le "m"', le("uid", "m")),
    ("title pr", present("title")),
    ('title co ""', present("title")),  # every value contains the empty string
    ("title eq null", not_(present("title"))),
    ('id eq "1b4e28ba"', eq("didmosUUID", "1b4e28ba")),
    ("shoeSize gt 42", gt("didmosShoeSize", "42")),
    ("shoeSize le -3", le("didmosShoeSize", "-3")),
    ("height eq 1.80", eq("didmosHeight", "1.8")),
    ("height ge 2E+1", ge("didmosHeight", "20")),
    ("height lt 2", lt("didmosHeight", "2")),
    ('hired ge "2011-05-13T04:42:34Z"', ge("didmosHired", "20110513044234Z")),
    ("photo pr", present("jpegPhoto")),
])
def test_every_operator(text, expected):
    assert ldap_of(text, EXTENDED) == expected


def test_rfc_examples_on_mapped_attributes():
    assert ldap_of(f'{USER}:userName sw "J"') == starts_with("uid", "J")
    assert ldap_of('title pr and userType eq "Employee"') == all_of(present("title"), eq("didmosUserType", "Employee"))
    assert ldap_of('title pr or userType eq "Intern"') == any_of(present("title"), eq("didmosUserType", "Intern"))
    assert ldap_of('userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")') == all_of(
        eq("didmosUserType", "Employee"), any_of(contains("mail", "example.com"), contains("mail", "example.org")))
    excluded = 'userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")'
    assert ldap_of(excluded) == all_of(
        not_(eq("didmosUserType", "Employee")),
        not_(any_of(contains("mail", "example.com"), contains("mail", "example.org"))))
    assert ldap_of('userType eq "Employee" and (emails.type eq "work")') == all_of(
        eq("didmosUserType", "Employee"), present("mail"))
    assert ldap_of('userType eq "Employee" and emails[type eq "work" and value co "@example.com"]') == all_of(
        eq("didmosUserType", "Employee"), contains("mail", "@example.com"))
    for op, expected in [("gt", gt), ("ge", ge), ("lt", lt), ("le", le)]:
        assert ldap_of(f'meta.lastModified {op} "2011-05-13T04:42:34Z"') == expected("modifyTimestamp",
                                                                                      "20110513044234Z")
    with pytest.raises(InvalidFilter, match="unknown attribute 'ims'") as caught:
        ldap_of('emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]')
    assert caught.value.position == 54
    with pytest.raises(InvalidFilter, match="unknown attribute 'schemas'"):
        ldap_of(f'schemas eq "{ENTERPRISE}"')


def test_precedence_grouping_and_not_translate_as_written():
    a, b, c = eq("uid", "a"), eq("title", "b"), eq("displayName", "c")
    assert ldap_of('userName eq "a" or title eq "b" and displayName eq "c"') == any_of(a, all_of(b, c))
    assert ldap_of('(userName eq "a" or title eq "b") and displayName eq "c"') == all_of(any_of(a, b), c)
    assert ldap_of('not (userName eq "a" or title eq "b")') == not_(any_of(a, b))
    assert ldap_of('userName EQ "x" AND active Eq true') == all_of(eq("uid", "x"), eq("didmosActive", "TRUE"))


def test_schema_urns_select_the_schema():
    assert ldap_of(f'{ENTERPRISE}:employeeNumber eq "7"') == eq("employeeNumber", "7")
    assert ldap_of(f'{ENTERPRISE}:manager pr') == present("manager")
    assert ldap_of(f'{USER}:name.givenName eq "Barbara"') == eq("givenName", "Barbara")
    assert ldap_of(f'{USER}:id eq "x"') == eq("didmosUUID", "x")
    with pytest.raises(InvalidFilter, match="unknown attribute"):
        ldap_of(f'{ENTERPRISE}:userName eq "x"')  # userName is in the core schema only


def test_booleans_also_from_strings_unless_strict():
    assert ldap_of("active eq true") == eq("didmosActive", "TRUE")
    assert ldap_of("active ne FALSE") == not_(eq("didmosActive", "FALSE"))
    assert ldap_of('active eq "True"') == eq("didmosActive", "TRUE")
    assert ldap_of('active eq "false"') == eq("didmosActive", "FALSE")
    with pytest.raises(InvalidFilter, match='active is a boolean; compare it with true or false, not "True"'):
        ldap_of('active eq "True"', tolerate_case=False)
    for wrong in ('"yes"', "1", "null and x pr"):
        with pytest.raises(InvalidFilter):
            ldap_of(f"active eq {wrong}")
    for op in ("co", "sw", "gt", "le"):
        with pytest.raises(InvalidFilter, match=f"active is of type boolean; {op} does not apply"):
            ldap_of(f"active {op} true")


def test_values_must_fit_the_attribute_type():
    for text, why in [("userName eq 7", "userName is a string; write the value in double quotes, not 7"),
                      ("userName eq true", "write the value in double quotes, not true"),
                      ('shoeSize eq "42"', "shoeSize is an integer; write a whole number"),
                      ("shoeSize eq 4.5", "shoeSize is an integer"),
                      ('height eq "1.8"', "height is a decimal"),
                      ("shoeSize co 4", "shoeSize is of type integer; co does not apply"),
                      ('hired sw "2011"', "hired is of type dateTime; sw does not apply"),
                      ('photo eq "AAAA"', "photo is of type binary; eq does not apply to it (use pr)"),
                      ('userName ne null', "null compares only with eq"),
                      ('userName gt null', "null compares only with eq")]:
        with pytest.raises(InvalidFilter, match=re.escape(why)):
            ldap_of(text, EXTENDED)


@pytest.mark.parametrize("value, expected", [
    ("2011-05-13T04:42:34Z", "20110513044234Z"),
    ("2011-05-13t04:42:34z", "20110513044234Z"),
    ("2011-05-13T04:42:34+02:00", "20110513024234Z"),
    ("2011-05-13T00:30:00-01:30", "20110513020000Z"),
    ("2011-12-31T23:00:00-01:00", "20120101000000Z"),
    ("2011-05-13T04:42:34.500Z", "20110513044234.5Z"),  # kept: slapd orders ...34Z < ...34.5Z < ...35Z
    ("2011-05-13T04:42:34.000Z", "20110513044234Z"),
    ("0800-01-01T00:00:00Z", "08000101000000Z"),
])
def test_datetimes_become_utc_generalized_time(value, expected):
    assert ldap_of(f'meta.created eq "{value}"') == eq("createTimestamp", expected)


@pytest.mark.parametrize("value", ["2011-05-13T04:42:34", "2011-05-13", "2011-02-30T00:00:00Z",
                                   "2011-05-13T24:00:00Z", "2011-05-13 04:42:34Z", "0001-01-01T00:00:00+01:00",
                                   "2011-05-13T04:42:34+24:00", "yesterday", ""])
def test_invalid_datetimes_are_refused(value):
    with pytest.raises(InvalidFilter, match="meta.lastModified is a dateTime; .* is not an RFC 3339 date"):
        ldap_of(f'meta.lastModified gt "{value}"')


def test_unknown_and_unstored_attributes_are_named():
    for text, name in [('shoeSize eq 1', "unknown attribute 'shoeSize'"),
                       ('name.nickname eq "x"', "unknown attribute 'name.nickname'"),
                       ('meta.version eq "x"', "meta.version is not stored in the directory"),
                       ('meta.resourceType eq "User"', "meta.resourceType is not stored"),
                       ('emails.display eq "x"', "emails.display is not stored"),
                       ('groups.display eq "x"', "groups.display is not stored"),
                       ('emails[display eq "x"]', "emails.display is not stored"),
                       ('emails[shoe eq "x"]', "unknown attribute 'emails.shoe'"),
                       ('password pr', "password is never returned, so it cannot be filtered on"),
                       (f'{LUI}:roles eq "x"', "roles is not stored")]:
        with pytest.raises(InvalidFilter, match=re.escape(name)):
            ldap_of(text)
    with pytest.raises(InvalidFilter, match="at position 20 of the filter"):
        ldap_of('userName eq "x" and shoeSize eq 1')
    assert ldap_of('externalId eq "x"') == eq("didmosExternalId", "x")  # a common attribute, stored
    assert ldap_of('nickName eq "x"') == eq("didmosNickName", "x")



def test_complex_attributes_need_a_sub_attribute():
    assert ldap_of('name.givenName eq "Barbara"') == eq("givenName", "Barbara")
    with pytest.raises(InvalidFilter, match="name is complex; compare one of its sub-attributes instead"):
        ldap_of('name eq "Barbara"')
    assert ldap_of("name pr") == any_of(present("cn"), present("sn"), present("givenName"), present("didmosMiddleName"),
                                        present("didmosHonorificPrefix"), present("didmosHonorificSuffix"))
    assert ldap_of('addresses[locality eq "Berlin" and postalCode sw "10"]') == all_of(
        eq("l", "Berlin"), starts_with("postalCode", "10"))
    with pytest.raises(InvalidFilter, match="userName is not a complex attribute"):
        ldap_of('userName[value eq "x"]')


# --- typed multi-valued attributes ---------------------------------------------------------------------

PHONES = ("telephoneNumber", "mobile", "homePhone", "facsimileTelephoneNumber", "pager")


def test_typed_values_are_searched_in_every_type():
    assert ldap_of('emails co "@x"') == contains("mail", "@x")
    assert ldap_of('phoneNumbers.value sw "+49"') == any_of(*(starts_with(a, "+49") for a in PHONES))
    assert ldap_of("phoneNumbers pr") == any_of(*(present(a) for a in PHONES))
    assert ldap_of('phoneNumbers ne "1"') == not_(any_of(*(eq(a, "1") for a in PHONES)))
    assert ldap_of("phoneNumbers eq null") == not_(any_of(*(present(a) for a in PHONES)))


def test_a_type_condition_selects_ldap_attributes():
    assert ldap_of('phoneNumbers.type eq "mobile"') == present("mobile")
    assert ldap_of('phoneNumbers.type eq "MOBILE"') == present("mobile")  # types are caseExact false
    assert ldap_of('emails.type eq "home"') == any_of()  # no such type here: matches nothing, not an error
    assert str(ldap_of('emails.type eq "home"')) == "(|)"
    assert ldap_of('phoneNumbers.type ne "work"') == any_of(*(present(a) for a in PHONES[1:]))
    assert ldap_of('phoneNumbers.type sw "p"') == present("pager")
    assert ldap_of("emails.primary eq true") == present("mail")
    assert ldap_of("phoneNumbers.primary eq true") == present("telephoneNumber")


def test_value_paths_apply_the_value_condition_to_the_matching_types_only():
    assert ldap_of('phoneNumbers[type eq "mobile" and value sw "+49"]') == starts_with("mobile", "+49")
    assert ldap_of('phoneNumbers[type eq "mobile" or type eq "home"]') == any_of(present("mobile"),
                                                                                   present("homePhone"))
    # or: a mobile number at all, or a +49 number of any other type
    assert ldap_of('phoneNumbers[type eq "mobile" or value sw "+49"]') == any_of(
        starts_with("telephoneNumber", "+49"), present("mobile"),
        *(starts_with(a, "+49") for a in PHONES[2:]))
    assert ldap_of('phoneNumbers[not (type eq "mobile") and value sw "+49"]') == any_of(
        *(starts_with(a, "+49") for a in PHONES if a != "mobile"))
    # a value of that type must exist for "some value has no x"
    assert ldap_of('emails[type eq "work" and not (value co "x")]') == all_of(present("mail"),
                                                                              not_(contains("mail", "x")))
    assert ldap_of('emails[type eq "work" and value eq null]') == any_of()
    assert ldap_of('emails[type eq "home" and value co "x"]') == any_of()
    assert ldap_of('emails[type eq "work" or type eq "home"]') == present("mail")
    assert ldap_of('emails[value pr and not (value eq null)]') == present("mail")
    assert ldap_of("emails[primary eq true]") == present("mail")
    assert ldap_of('phoneNumbers[primary eq "True" and value ew "0"]') == ends_with("telephoneNumber", "0")
    assert ldap_of("phoneNumbers[primary eq false]") == any_of(*(present(a) for a in PHONES[1:]))
    assert ldap_of('emails[type eq "work" and value co "@example.com"] or userName eq "x"') == any_of(
        contains("mail", "@example.com"), eq("uid", "x"))


# --- references ------------------------------------------------------------------------------------------

def test_references_need_a_resolver():
    dns = {"u1": "didmosUUID=u1,ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"}
    assert ldap_of('members.value eq "u1"', GROUPS, resolve_id=dns.get) == eq("member", dns["u1"])
    assert ldap_of('members eq "u1"', GROUPS, resolve_id=dns.get) == eq("member", dns["u1"])
    assert ldap_of('members[value eq "u1"]', GROUPS, resolve_id=dns.get) == eq("member", dns["u1"])
    assert ldap_of('members ne "u1"', GROUPS, resolve_id=dns.get) == not_(eq("member", dns["u1"]))
    assert ldap_of('members eq "nobody"', GROUPS, resolve_id=dns.get) == any_of()
    assert ldap_of('groups.value eq "u1"', resolve_id=dns.get) == eq("memberOf", dns["u1"])
    assert ldap_of("members pr", GROUPS) == present("member")  # needs no ids
    assert ldap_of("members eq null", GROUPS) == not_(present("member"))
    with pytest.raises(InvalidFilter, match="filtering on groups.value is not supported here"):
        ldap_of('groups.value eq "x"')
    with pytest.raises(InvalidFilter, match="filtering on members.value is not supported here"):
        ldap_of('members.value eq "x"', GROUPS)
    with pytest.raises(InvalidFilter, match="only eq, ne and pr apply to it, not co"):
        ldap_of('members co "x"', GROUPS, resolve_id=dns.get)
    with pytest.raises(InvalidFilter, match="members.display is not stored"):
        ldap_of('members.display eq "x"', GROUPS, resolve_id=dns.get)


def test_a_tree_can_be_translated_directly():
    tree = Or((Comparison(p("userName"), "eq", "a"), Not(Presence(p("title")))))
    assert to_ldap(tree, USERS) == any_of(eq("uid", "a"), not_(present("title")))


# --- properties ------------------------------------------------------------------------------------------

NASTY = '*()\\\x00"\' é€𝄞=&|!~<>:[]\n\t\u2028'
texts = st.one_of(st.text(), st.text(alphabet=NASTY))  # st.text() never yields lone surrogates


@given(value=texts, ascii_only=st.booleans())
def test_no_value_changes_the_ldap_filter_structure(value, ascii_only):
    result = to_ldap(f"userName eq {json.dumps(value, ensure_ascii=ascii_only)}", USERS)
    assert result == eq("uid", value)
    assert lf.parse(str(result)) == eq("uid", value)


STRING_PATHS = [p("userName"), p("name", "givenName"), p("name", "familyName"), p("displayName"), p("title"),
                p("emails"), p("emails", "value"), p("phoneNumbers", "value"), p("id"),
                AttrPath(ENTERPRISE, "employeeNumber"), AttrPath(USER, "userName"), p("addresses", "locality")]
DATE_PATHS = [p("meta", "created"), p("meta", "lastModified")]
TYPE_PATHS = [p("emails", "type"), p("phoneNumbers", "type")]
TYPES = st.sampled_from(["work", "mobile", "home", "fax", "pager", "Work", "other"]) | st.text(max_size=5)
ORDERED = ["eq", "ne", "gt", "ge", "lt", "le"]
ALL_OPS = ORDERED + ["co", "sw", "ew"]
stamps = st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat().replace("+00:00", "Z"))


def comparisons(paths, ops, values):
    return st.builds(Comparison, st.sampled_from(paths), st.sampled_from(ops), values)


leaves = st.one_of(
    comparisons(STRING_PATHS + TYPE_PATHS, ALL_OPS, texts),
    comparisons(TYPE_PATHS, ALL_OPS, TYPES),
    comparisons(STRING_PATHS, ["eq"], st.none()),
    comparisons([p("active"), p("emails", "primary")], ["eq", "ne"],
                st.booleans() | st.sampled_from(["true", "False", "TRUE"])),
    comparisons(DATE_PATHS, ORDERED, stamps),
    st.builds(Presence, st.sampled_from(STRING_PATHS + TYPE_PATHS + DATE_PATHS + [p("active"), p("name")])),
)
inner_leaves = st.one_of(
    comparisons([p("value")], ALL_OPS, texts), comparisons([p("type")], ALL_OPS, TYPES),
    comparisons([p("primary")], ["eq", "ne"], st.booleans()),
    st.builds(Presence, st.sampled_from([p("value"), p("type")])),
)


def logic(children):
    return st.one_of(st.lists(children, min_size=2, max_size=4).map(lambda ps: And(tuple(ps))),
                     st.lists(children, min_size=2, max_size=4).map(lambda ps: Or(tuple(ps))),
                     children.map(Not))


inner_trees = st.recursive(inner_leaves, logic, max_leaves=6)
value_paths = st.builds(ValuePath, st.sampled_from([p("emails"), p("phoneNumbers")]), inner_trees)
trees = st.recursive(leaves | value_paths, logic, max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(tree=trees)
def test_random_filters_parse_back_and_translate_into_valid_ldap(tree):
    text = str(tree)
    assert parse(text) == tree
    result = to_ldap(text, USERS)
    assert lf.parse(str(result)) == result


PIECES = ["(", ")", "[", "]", '"', "\\", " ", "and", "or", "not", "eq", "pr", ".", ":", '"\\u', "1e99999",
          "true", "null", "\x00", "emails[", "].value", "urn:x:", "-", "0"]


@st.composite
def mutated_filters(draw):
    text = str(draw(trees))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(st.sampled_from(PIECES) | st.text(max_size=2)) + text[at + cut:]
    return text


def only_invalid_filter(text, **kwargs):
    """Translate, allowing no exception but InvalidFilter; a result must be a valid LDAP filter."""
    try:
        result = to_ldap(text, USERS, **kwargs)
    except InvalidFilter:
        return
    assert lf.parse(str(result)) == result


@settings(max_examples=200, deadline=None)
@given(text=st.text() | st.text(alphabet=NASTY + "abemqnoprt. ", max_size=40))
def test_garbage_only_ever_raises_invalid_filter(text):
    only_invalid_filter(text)


@settings(max_examples=200, deadline=None)
@given(text=mutated_filters(), resolver=st.sampled_from([None, lambda i: None, lambda i: f"cn={i or 'x'},dc=de"]))
def test_mutated_filters_only_ever_raise_invalid_filter(text, resolver):
    only_invalid_filter(text, resolve_id=resolver)


# --- the real slapd ------------------------------------------------------------------------------------

PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"


@pytest.fixture(scope="module")
def people(didmos_slapd):
    """Two users whose uids start with a prefix no other test uses; yields (connection, prefix, ids)."""
    conn = didmos_slapd.admin_connection()
    prefix = f"sf{uuid.uuid4().hex[:8]}-"
    users = {
        "alice": {"mail": ["alice@example.org"], "mobile": ["+49 171 1234567"], "telephoneNumber": ["+1 555 0100"],
                  "didmosActive": ["TRUE"], "sn": ["Example"]},
        "bob": {"mail": ["bob@example.com", "bob@example.org"], "telephoneNumber": ["+49 30 1234"],
                "didmosActive": ["FALSE"], "sn": ["Other"]},
    }
    ids = {}
    for name, attrs in users.items():
        ids[name] = str(uuid.uuid4())
        entry = {"objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson"], "uid": [prefix + name],
                 "cn": [name], "didmosUUID": [ids[name]], **attrs}
        conn.add_s(f"didmosUUID={ids[name]},{PEOPLE}", [(k, [v.encode() for v in vs]) for k, vs in entry.items()])
    yield conn, prefix, ids
    for user_id in ids.values():
        conn.delete_s(f"didmosUUID={user_id},{PEOPLE}")
    conn.unbind_s()


def test_slapd_finds_exactly_the_right_entries(people):
    conn, prefix, ids = people

    def found(text):
        ours = all_of(starts_with("uid", prefix), to_ldap(text, USERS))
        return {attrs["uid"][0].decode().removeprefix(prefix)
                for _, attrs in conn.search_s(PEOPLE, ldap.SCOPE_ONELEVEL, str(ours), ["uid"])}

    (_, stamp), = conn.search_s(f"didmosUUID={ids['alice']},{PEOPLE}", ldap.SCOPE_BASE, attrlist=["createTimestamp"])
    created = datetime.strptime(stamp["createTimestamp"][0].decode(), "%Y%m%d%H%M%SZ")
    rfc3339 = lambda d: d.strftime("%Y-%m-%dT%H:%M:%S")  # noqa: E731

    assert found('emails co "example.org"') == {"alice", "bob"}
    assert found('emails ew "EXAMPLE.COM"') == {"bob"}
    assert found(f'userName eq "{prefix.upper()}ALICE"') == {"alice"}  # uid matches caseIgnore
    assert found('phoneNumbers[type eq "mobile" and value sw "+49"]') == {"alice"}
    assert found('phoneNumbers[type eq "work" and value sw "+49"]') == {"bob"}
    assert found('phoneNumbers[value sw "+49"]') == {"alice", "bob"}
    assert found('phoneNumbers.type eq "mobile"') == {"alice"}
    assert found('not (phoneNumbers.type eq "mobile")') == {"bob"}
    assert found('emails[type eq "home"]') == set()  # (|): slapd matches nothing
    assert found('emails[type eq "work" and not (value co "example.com")]') == {"alice"}
    assert found('active eq "True"') == {"alice"} and found("active eq false") == {"bob"}
    assert found(f'id eq "{ids["bob"]}"') == {"bob"}
    assert found('title eq null and name.familyName eq "example"') == {"alice"}
    assert found('userName eq "x" or (emails pr and not (active eq true))') == {"bob"}
    alice = f'userName eq "{prefix}alice" and '
    assert found(alice + f'meta.created eq "{rfc3339(created)}Z"') == {"alice"}
    assert found(alice + f'meta.created eq "{rfc3339(created + timedelta(hours=2))}+02:00"') == {"alice"}
    # fractions of a second are ordered by slapd as written: created < created.5 < created + 1s
    assert found(alice + f'meta.created ge "{rfc3339(created)}.5Z"') == set()
    assert found(alice + f'meta.created lt "{rfc3339(created)}.5Z"') == {"alice"}
    assert found(alice + f'meta.created gt "{rfc3339(created - timedelta(seconds=1))}.5Z"') == {"alice"}
    assert found(alice + f'meta.created gt "{rfc3339(created)}Z"') == set()
    assert found('meta.lastModified lt "2000-01-01T00:00:00Z"') == set()
