"""The filter builder: rendering, escaping, parsing, configuration, and the real slapd's view of it."""

import ldap
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from didmos_ldap.filters import (And, Approx, Equal, Filter, GreaterOrEqual, LessOrEqual, Not, Or, Present,
                                 Substring, all_of, any_of, approx, contains, ends_with, eq, from_structure, ge,
                                 le, not_, parse, present, starts_with)

BASE = "dc=didmos,dc=de"
PROBE_DN = f"cn=filterprobe,{BASE}"


# --- rendering and escaping -------------------------------------------------------------------

@pytest.mark.parametrize(("node", "text"), [
    (eq("cn", "Ada"), "(cn=Ada)"),
    (present("mail"), "(mail=*)"),
    (contains("cn", "da"), "(cn=*da*)"),
    (starts_with("uid", "a"), "(uid=a*)"),
    (ends_with("mail", "@example.org"), "(mail=*@example.org)"),
    (Substring("cn", "a", ("b", "c"), "d"), "(cn=a*b*c*d)"),
    (ge("uidNumber", 1000), "(uidNumber>=1000)"),
    (le("modifyTimestamp", "20240101000000Z"), "(modifyTimestamp<=20240101000000Z)"),
    (approx("sn", "Lovelace"), "(sn~=Lovelace)"),
    (all_of(eq("a", "1"), eq("b", "2")), "(&(a=1)(b=2))"),
    (any_of(eq("a", "1"), eq("b", "2")), "(|(a=1)(b=2))"),
    (not_(present("mail")), "(!(mail=*))"),
    (And(()), "(&)"),
    (Or(()), "(|)"),
    (eq("cn;lang-de", "x"), "(cn;lang-de=x)"),
    (eq("2.5.4.3", "x"), "(2.5.4.3=x)"),
])
def test_each_node_kind_renders(node, text):
    assert str(node) == node.render() == text


def test_special_characters_are_escaped_by_python_ldaps_rules():
    assert str(eq("cn", "*()\\\x00")) == r"(cn=\2a\28\29\5c\00)"
    assert str(contains("cn", "a*b")) == r"(cn=*a\2ab*)"
    assert str(eq("cn", "Jürgen €")) == "(cn=Jürgen €)"  # UTF-8 needs no escaping in RFC 4515


def test_bytes_are_escaped_byte_by_byte():
    assert str(eq("jpegPhoto", b"\xff\x00A(")) == r"(jpegPhoto=\ff\00\41\28)"
    assert str(eq("jpegPhoto", "é".encode())) == r"(jpegPhoto=\c3\a9)"  # UTF-8 octets, not the code point
    # python-ldap's escape_mode=2 writes the code point, which is only one byte below U+0100
    assert str(eq("jpegPhoto", "€".encode())) == r"(jpegPhoto=\e2\82\ac)"


def test_bool_and_int_values_are_converted_explicitly():
    assert str(eq("didmosActive", True)) == "(didmosActive=TRUE)"
    assert str(eq("didmosActive", False)) == "(didmosActive=FALSE)"
    assert str(ge("uidNumber", -5)) == "(uidNumber>=-5)"
    assert eq("didmosActive", True) == eq("didmosActive", "TRUE")  # same octets, same filter
    with pytest.raises(TypeError, match="not float"):
        eq("x", 1.5)
    with pytest.raises(TypeError, match="not NoneType"):
        starts_with("x", None)


@pytest.mark.parametrize("name", ["cn)(uid=*", "", "1abc", "cn=", "c n", "cn;", "01.2", "1.", "-cn", "cn\x00", None])
def test_bad_attribute_names_are_rejected(name):
    with pytest.raises(ValueError, match="not a valid LDAP attribute name"):
        eq(name, "x")
    with pytest.raises(ValueError, match="not a valid LDAP attribute name"):
        present(name)


def test_substring_needs_a_non_empty_part():
    with pytest.raises(ValueError, match="needs an initial, any or final part"):
        Substring("cn")
    with pytest.raises(ValueError, match="empty part"):
        Substring("cn", initial="", final="x")


def test_operators_flatten_and_nodes_are_immutable_and_hashable():
    a, b, c = eq("a", "1"), eq("b", "2"), eq("c", "3")
    assert a & b & c == And((a, b, c))
    assert (a | b) | (c | a) == Or((a, b, c, a))
    assert (a | b) & c == And((Or((a, b)), c))  # only the same kind merges
    assert ~a == Not(a) and str(~(a & b)) == "(!(&(a=1)(b=2)))"
    assert all_of(a & b, c) == And((a, b, c))
    assert len({a & b, eq("a", "1") & eq("b", "2"), eq("a", b"1") & b}) == 1
    with pytest.raises(AttributeError):
        a.value = "2"
    with pytest.raises(TypeError):
        And(("(cn=x)",))


# --- parsing ------------------------------------------------------------------------------------

REAL_WORLD = [
    "(&(objectClass=person)(|(mail=*)(uid=a*)))",
    "(&(objectClass=didmosPerson)(didmosTenant=default-tenant)(!(didmosActive=FALSE)))",
    "(|(cn=*smith*)(sn~=Smyth)(givenName=J*n*y))",
    r"(cn=Parens \28and\29 star \2a)",
    r"(objectGUID=\01\02\ff\fe)",
    "(&(uidNumber>=1000)(uidNumber<=60000)(cn;lang-de=Müller))",
    "(2.5.4.3=x)",
    "(&)",
    "(|)",
]


@pytest.mark.parametrize("text", REAL_WORLD)
def test_real_world_filters_parse_and_render_back(text):
    node = parse(text)
    assert isinstance(node, Filter) and parse(str(node)) == node
    assert str(node) == text


def test_parse_builds_the_same_nodes_and_decodes_escapes():
    assert parse("(&(objectClass=person)(|(mail=*)(uid=a*)))") == (
        eq("objectClass", "person") & (present("mail") | starts_with("uid", "a")))
    assert parse(r"(cn=\2a\28\29\5c\00)") == Equal("cn", "*()\\\x00")
    assert parse(r"(cn=J\C3\BCrgen)").value == "Jürgen"
    assert parse(r"(objectGUID=\01\ff)").value == b"\x01\xff"  # not UTF-8: stays bytes
    assert parse("(cn=*a*b*)") == Substring("cn", any=("a", "b"))
    assert parse("(cn=)") == Equal("cn", "")


@pytest.mark.parametrize(("text", "message"), [
    ("", r"position 0: expected '\('"),
    ("cn=a", r"position 0: expected '\('"),
    ("(cn=a", r"position 5: expected '\)'"),
    ("(cn=a))", "position 6: unexpected text"),
    ("(cn=a)(sn=b)", "position 6: unexpected text"),
    ("(cn=a(b)", r"position 5: '\(' must be escaped"),
    (r"(cn=a\2)", "position 5: '.' must be followed by two hex digits"),
    (r"(cn=\zz)", "position 4: '.' must be followed by two hex digits"),
    ("(cn=a**b)", r"position 6: empty substring part"),
    ("(cn>=a*)", r"position 6: '\*' must be escaped"),
    ("(cn:dn:=x)", "position 3: extensible match filters"),
    ("(cn:caseExactMatch:=x)", "extensible match"),
    ("(cn)", "position 3: expected '='"),
    ("(1abc=x)", "position 1: '1abc' is not a valid LDAP attribute name"),
    ("( cn=a)", "position 1:"),
    ("(& (cn=a))", "position 2: expected '\\)'"),
    ("(!)", "position 2: expected '\\('"),
    ("(!(a=1)(b=2))", "position 7: expected '\\)'"),
    ("(cn=a\x00)", "must be escaped"),
    ("(!" * 200 + "(a=b)" + ")" * 200, "nested deeper than"),
])
def test_parse_errors_say_where(text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


# --- configuration structures --------------------------------------------------------------------

def test_from_structure_builds_the_documented_example():
    node = from_structure({"and": [{"eq": ["objectClass", "person"]},
                                   {"or": [{"present": "mail"}, {"starts_with": ["uid", "a"]}]},
                                   {"not": {"eq": ["didmosActive", False]}}]})
    assert str(node) == "(&(objectClass=person)(|(mail=*)(uid=a*))(!(didmosActive=FALSE)))"
    assert from_structure({"contains": ["cn", "x"]}) == contains("cn", "x")
    assert from_structure({"ge": ["n", 3]}) == ge("n", 3) and from_structure({"le": ["n", 3]}) == le("n", 3)
    assert from_structure({"approx": ["sn", "x"]}) == approx("sn", "x")
    assert from_structure({"ends_with": ["a", "b"]}) == ends_with("a", "b")
    assert from_structure({"or": []}) == Or(())


@pytest.mark.parametrize(("obj", "message"), [
    ({"equals": ["cn", "x"]}, "filter has unknown key 'equals'"),
    ({"eq": ["cn", "x"], "present": "mail"}, "exactly one key"),
    ("(cn=x)", "must be a mapping"),
    ({"and": {"eq": ["cn", "x"]}}, "filter.and must be a list of filters"),
    ({"eq": ["cn"]}, r"filter.eq must be a list \[attribute, value\]"),
    ({"eq": {"cn": "x"}}, "filter.eq must be a list"),
    ({"or": [{"present": "mail"}, {"eq": ["cn)(x", "y"]}]}, r"filter.or\[1\].eq: 'cn\)\(x' is not a valid"),
    ({"not": {"eq": ["cn", None]}}, "filter.not.eq: filter values must be str, bytes, bool or int, not NoneType"),
    ({"present": ["mail"]}, "filter.present: .* not a valid LDAP attribute name"),
    ({"and": [{"nope": 1}]}, r"filter.and\[0\] has unknown key 'nope'"),
])
def test_from_structure_errors_name_the_node(obj, message):
    with pytest.raises(ValueError, match=message):
        from_structure(obj)


# --- properties: no value can change a filter's structure ------------------------------------------

NASTY = "*()\\\x00 é€𝄞=&|!~<>:"
texts = st.one_of(st.text(), st.text(alphabet=NASTY))  # st.text() never yields lone surrogates
values = st.one_of(texts, st.binary(), st.booleans(), st.integers())
parts = st.one_of(st.text(min_size=1), st.text(alphabet=NASTY, min_size=1), st.binary(min_size=1),
                  st.booleans(), st.integers())
attrs = st.one_of(st.sampled_from(["cn", "objectClass", "didmosUUID", "cn;lang-de", "2.5.4.3"]),
                  st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}(;[A-Za-z0-9-]{1,8}){0,2}", fullmatch=True),
                  st.from_regex(r"(0|[1-9][0-9]{0,3})(\.(0|[1-9][0-9]{0,3})){1,5}", fullmatch=True))
compares = st.sampled_from([Equal, GreaterOrEqual, LessOrEqual, Approx])
substrings = st.tuples(attrs, st.none() | parts, st.lists(parts, max_size=3).map(tuple), st.none() | parts).filter(
    lambda t: t[1:] != (None, (), None)).map(lambda t: Substring(*t))
leaves = st.one_of(st.builds(lambda kind, a, v: kind(a, v), compares, attrs, values),
                   st.builds(Present, attrs), substrings)
trees = st.recursive(leaves, lambda children: st.one_of(
    st.lists(children, max_size=4).map(lambda ps: And(tuple(ps))),
    st.lists(children, max_size=4).map(lambda ps: Or(tuple(ps))),
    children.map(Not)), max_leaves=25)


@pytest.mark.parametrize("kind", [Equal, GreaterOrEqual, LessOrEqual, Approx])
@given(attr=attrs, value=values)
def test_any_compare_value_round_trips(kind, attr, value):
    node = kind(attr, value)
    assert parse(str(node)) == node


@given(node=substrings)
def test_any_substring_value_round_trips(node):
    assert parse(str(node)) == node


@given(attr=attrs)
def test_presence_round_trips(attr):
    assert parse(str(present(attr))) == present(attr)


@given(tree=trees)
def test_any_tree_round_trips(tree):
    text = str(tree)
    assert parse(text) == tree


# --- the real slapd agrees ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe(didmos_slapd):
    conn = didmos_slapd.admin_connection()
    try:
        conn.add_s(PROBE_DN, [("objectClass", [b"applicationProcess"]), ("cn", [b"filterprobe"])])
    except ldap.ALREADY_EXISTS:
        pass
    yield conn
    conn.delete_s(PROBE_DN)
    conn.unbind_s()


def _found(conn, node: Filter) -> list[str]:
    return [dn for dn, _ in conn.search_s(BASE, ldap.SCOPE_SUBTREE, str(node), ["1.1"])]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=texts)
def test_slapd_finds_exactly_the_value_it_stored(probe, value):
    try:
        probe.modify_s(PROBE_DN, [(ldap.MOD_REPLACE, "description", [value.encode()])])
    except ldap.INVALID_SYNTAX:
        assume(False)  # DirectoryString refuses e.g. the empty string
    assert _found(probe, eq("description", value) & eq("cn", "filterprobe")) == [PROBE_DN]
    # an appended non-space character survives caseIgnoreMatch's space and case folding
    assert _found(probe, eq("description", value + "x") & eq("cn", "filterprobe")) == []


@pytest.mark.parametrize("value", ["*)(uid=*", "x)(|(objectClass=*", "*", "filterprobe)(cn=*"])
def test_injection_classics_match_nothing(probe, value):
    assert _found(probe, eq("uid", value)) == [] and _found(probe, eq("cn", value)) == []
    assert _found(probe, eq("cn", value) | eq("description", value)) == []


def test_the_escaping_is_what_stops_a_wildcard(probe):
    assert PROBE_DN in [dn for dn, _ in probe.search_s(BASE, ldap.SCOPE_SUBTREE, "(cn=filter*)", ["1.1"])]
    assert _found(probe, eq("cn", "filter*")) == []  # the same text as a value is a literal '*'


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_slapd_accepts_every_rendered_tree(probe, tree):
    probe.search_s(BASE, ldap.SCOPE_SUBTREE, str(tree), ["1.1"])  # libldap and slapd parse it: no FILTER_ERROR


def test_in_subtree_renders_openldaps_extensible_match_and_matches_the_subtree(didmos_slapd):
    import ldap as _ldap

    from didmos_ldap.filters import in_subtree

    f = in_subtree("ou=people, OU=Data,ou=default-tenant,dc=didmos,dc=de")
    assert str(f) == "(entryDN:dnSubtreeMatch:=ou=people, OU=Data,ou=default-tenant,dc=didmos,dc=de)"
    assert f == in_subtree("ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de")
    assert str(in_subtree("cn=a\\2a\\28,dc=de")) == "(entryDN:dnSubtreeMatch:=cn=a\\5c2a\\5c28,dc=de)"
    with pytest.raises(ValueError, match="not a valid DN"):
        in_subtree("not a dn")
    found = didmos_slapd.admin_connection().search_s("dc=didmos,dc=de", _ldap.SCOPE_SUBTREE,
                                                     str(f & eq("uid", "superadmin")), ["uid"])
    assert [attrs["uid"] for _, attrs in found] == [[b"superadmin"]]
    assert from_structure({"in_subtree": "dc=de"}) == in_subtree("dc=de")
