"""The replaced default: userNames made from the person's name instead of didmos's user123x."""

import re

from conftest import ADMIN, unique


def create(client, given, family):
    response = client.post("/scim/v2/Users", json={"name": {"givenName": given, "familyName": family}}, headers=ADMIN)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["userName"]


def test_our_generator_wins_over_the_built_in_one(client):
    family = unique("Müller")
    first = create(client, "Zoë", family)
    assert first == f"zoe.{family.lower().replace('ü', 'u')}"
    # taken: the hook is asked again with the next attempt
    assert create(client, "Zoë", family) == first + "2"
    assert create(client, "Zoë", family) == first + "3"


def test_a_given_user_name_is_kept(client):
    name = unique("chosen")
    response = client.post("/scim/v2/Users", json={"userName": name, "name": {"givenName": "A", "familyName": "B"}},
                           headers=ADMIN)
    assert response.get_json()["userName"] == name


def test_without_a_given_name_the_built_in_generator_answers(client):
    response = client.post("/scim/v2/Users", json={"displayName": "Nobody"}, headers=ADMIN)
    assert response.status_code == 201
    assert re.fullmatch(r"user[0-9]{3}[a-z]", response.get_json()["userName"])
