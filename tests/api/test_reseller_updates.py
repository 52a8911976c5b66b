"""Changing a reseller's terms (PATCH /api/v1/resellers/{code}), and console people
scoped to a reseller, who see only its subtree."""

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from tests.api.test_console import PASSWORD, csrf_of, signed_in
from tests.api.test_resellers_api import reseller_key
from tests.reseller_support import reseller, stocked_reseller
from voms.runtime import Runtime
from voms.services import audit, people
from voms.services.auth import CONSOLE


@pytest.fixture
def tree(rt: Runtime) -> Runtime:
    stocked_reseller(rt)  # DIST, 5 %
    factories.standard_catalog(rt, "OTHER")
    reseller(rt, "SHOP", parent="DIST", commission_percent=3)
    reseller(rt, "KIOSK", parent="SHOP", commission_percent=2)
    reseller(rt, "RIVAL")
    return rt


def patch(client: TestClient, who: dict[str, str], code: str, body: Any) -> Any:
    return client.patch(f"/api/v1/resellers/{code}", headers=who, json=body)


def test_an_operator_changes_credit_limit_commission_and_contact(
    client: TestClient, tree: Runtime
) -> None:
    admin = bearer(factories.api_key(tree, "admin"))
    answer = patch(
        client,
        admin,
        "SHOP",
        {"credit_limit": 250_000, "commission_percent": "4.5", "contact": "shop@example.org"},
    )
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert (found["credit_limit"], found["commission_percent"], found["contact"]) == (
        250_000,
        4.5,
        "shop@example.org",
    )
    assert found["name"] == "SHOP Distribution"  # what was not given stays
    assert client.get("/api/v1/resellers/SHOP", headers=admin).json() == found
    [entry] = audit.read_audit_log(tree, CONSOLE, action="reseller.update")
    assert entry["detail"] == {
        "credit_limit": 250_000,
        "commission_bp": 450,
        "contact": "shop@example.org",
    }
    removed = patch(client, admin, "SHOP", {"contact": None})
    assert removed.json()["contact"] is None


def test_commissions_stay_ordered_down_the_tree(client: TestClient, tree: Runtime) -> None:
    admin = bearer(factories.api_key(tree, "admin"))
    above_parent = patch(client, admin, "SHOP", {"commission_percent": 6})
    assert above_parent.status_code == 409
    assert "parent" in above_parent.json()["detail"]
    below_child = patch(client, admin, "SHOP", {"commission_percent": 1})
    assert below_child.status_code == 409
    assert "under it" in below_child.json()["detail"]
    assert patch(client, admin, "SHOP", {"commission_percent": 2}).status_code == 200


def test_bad_bodies_are_422_after_the_scope(client: TestClient, tree: Runtime) -> None:
    admin = bearer(factories.api_key(tree, "admin"))
    for body in ({}, {"credit_limit": -1}, {"credit_limit": None}, {"parent": "RIVAL"}):
        assert patch(client, admin, "SHOP", body).status_code == 422, body
    assert patch(client, admin, "NOPE", {"credit_limit": -1}).status_code == 404
    other = bearer(factories.api_key(tree, "admin", "OTHER"))
    assert patch(client, other, "SHOP", {"credit_limit": -1}).status_code == 403


def test_a_resellers_key_changes_only_the_resellers_below_it(
    client: TestClient, tree: Runtime
) -> None:
    dist = reseller_key(tree, "DIST")
    assert patch(client, dist, "SHOP", {"credit_limit": 5000}).status_code == 200
    assert patch(client, dist, "DIST", {"credit_limit": 10**9}).status_code == 403
    assert patch(client, dist, "RIVAL", {"credit_limit": 1}).status_code == 403
    # no more credit than its parent has
    too_much = patch(client, dist, "SHOP", {"credit_limit": 10**7})
    assert too_much.status_code == 403
    shop = reseller_key(tree, "SHOP")
    assert patch(client, shop, "KIOSK", {"contact": "kiosk"}).status_code == 200
    assert patch(client, shop, "SHOP", {"contact": "me"}).status_code == 403


def test_a_person_of_a_reseller_sees_only_its_subtree_in_the_console(tree: Runtime) -> None:
    people.create_user(
        tree, CONSOLE, username="sam", role="distributor", password=PASSWORD, reseller="SHOP"
    )
    [sam] = [u for u in people.list_users(tree, CONSOLE) if u["username"] == "sam"]
    assert (sam["reseller"], sam["service_provider"]) == ("SHOP", "ACME")
    browser = signed_in(tree, "sam")
    listed = browser.get("/ui/resellers")
    assert listed.status_code == 200
    codes = re.findall(r'<a href="/ui/resellers/(\w+)">', listed.text)
    assert sorted(codes) == ["KIOSK", "SHOP"]
    assert browser.get("/ui/resellers/DIST").status_code == 403
    assert browser.get("/ui/resellers/RIVAL").status_code == 403
    # what a distributor reads elsewhere is not a reseller's to read
    for path in ("/ui/distribution", "/ui/batches"):
        assert browser.get(path).status_code == 403, path
    menu = browser.get("/ui/").text
    assert 'href="/ui/resellers"' in menu
    assert 'href="/ui/distribution"' not in menu
    # it changes the terms of the resellers below it, not its own
    own = browser.get("/ui/resellers/SHOP")
    assert 'action="/ui/resellers/SHOP"' not in own.text
    kiosk = browser.get("/ui/resellers/KIOSK")
    changed = browser.post(
        "/ui/resellers/KIOSK",
        data={
            "credit_limit": "777",
            "commission_percent": "1.5",
            "contact": "kiosk@example.org",
            "csrf_token": csrf_of(kiosk.text),
        },
    )
    assert changed.status_code == 303, changed.text
    shown = browser.get("/ui/resellers/KIOSK").text
    assert "7.77 KES" in shown
    assert "kiosk@example.org" in shown
    refused = browser.post(
        "/ui/resellers/KIOSK",
        data={"commission_percent": "9", "csrf_token": csrf_of(kiosk.text)},
    )
    assert refused.status_code == 409
    assert "parent" in refused.text


def test_only_a_distributor_is_scoped_to_a_reseller(tree: Runtime) -> None:
    with pytest.raises(Exception, match="only a distributor"):
        people.create_user(
            tree, CONSOLE, username="cara", role="care", password=PASSWORD, reseller="SHOP"
        )
