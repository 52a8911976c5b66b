"""The web console through HTTP: who may see what, CSRF, cookies, expiry, no PIN in URLs."""

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, update

from tests import factories
from tests.channel_support import configure
from tests.pgp import PartnerKeys
from voms.api.app import create_app
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services import distribution, people
from voms.services.auth import CONSOLE

PASSWORD = "correct horse battery"


@pytest.fixture
def console(rt: Runtime) -> Runtime:
    factories.standard_catalog(rt, "ACME")
    factories.standard_catalog(rt, "OTHER")
    factories.subscriber(rt, "254700000001", sp="ACME")
    factories.subscriber(rt, "254700000009", sp="OTHER")
    for name, role, sp in [
        ("root", "admin", None),
        ("carol", "care", "ACME"),
        ("otto", "operator", None),
    ]:
        people.create_user(
            rt, CONSOLE, username=name, role=role, password=PASSWORD, service_provider=sp
        )
    return rt


def client(rt: Runtime, base_url: str = "https://testserver") -> TestClient:
    return TestClient(create_app(rt), base_url=base_url, follow_redirects=False)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def signed_in(rt: Runtime, username: str) -> TestClient:
    browser = client(rt)
    page = browser.get("/ui/login")
    answer = browser.post(
        "/ui/login",
        data={"username": username, "password": PASSWORD, "csrf_token": csrf_of(page.text)},
    )
    assert answer.status_code == 303, answer.text
    return browser


def test_pages_need_a_session_and_send_the_browser_to_sign_in(console: Runtime) -> None:
    answer = client(console).get("/ui/batches?state=active")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fbatches%3Fstate%3Dactive"


def test_after_signing_in_the_dashboard_shows_and_the_next_page_is_honoured(
    console: Runtime,
) -> None:
    browser = client(console)
    page = browser.get("/ui/login?next=/ui/catalog")
    answer = browser.post(
        "/ui/login",
        data={
            "username": "root",
            "password": PASSWORD,
            "csrf_token": csrf_of(page.text),
            "next": "/ui/catalog",
        },
    )
    assert answer.headers["location"] == "/ui/catalog"
    dashboard = browser.get("/ui/")
    assert dashboard.status_code == 200
    assert "Vouchers by batch state" in dashboard.text


def test_sign_in_never_redirects_to_another_site(console: Runtime) -> None:
    browser = client(console)
    page = browser.get("/ui/login")
    answer = browser.post(
        "/ui/login",
        data={
            "username": "root",
            "password": PASSWORD,
            "csrf_token": csrf_of(page.text),
            "next": "//evil.example/ui/",
        },
    )
    assert answer.headers["location"] == "/ui/"


def test_a_wrong_password_is_answered_next_to_the_form(console: Runtime) -> None:
    browser = client(console)
    page = browser.get("/ui/login")
    answer = browser.post(
        "/ui/login",
        data={"username": "root", "password": "nope nope nope", "csrf_token": csrf_of(page.text)},
    )
    assert answer.status_code == 401
    assert "wrong username or password" in answer.text
    assert "nope nope nope" not in answer.text


def test_session_cookies_are_httponly_samesite_and_secure(console: Runtime) -> None:
    browser = signed_in(console, "root")
    cookie = next(c for c in browser.cookies.jar if c.name == "voms_session")
    assert cookie.secure
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite", "").lower() == "lax"


def test_secure_is_left_off_only_for_plain_http_on_loopback(console: Runtime) -> None:
    local = client(console, "http://127.0.0.1:8000")
    header = local.get("/ui/login").headers["set-cookie"]
    assert "Secure" not in header
    assert "HttpOnly" in header
    remote = client(console, "http://voms.example.net")
    assert "Secure" in remote.get("/ui/login").headers["set-cookie"]


def test_a_form_without_the_sessions_csrf_token_is_refused(console: Runtime) -> None:
    browser = signed_in(console, "root")
    answer = browser.post(
        "/ui/people",
        data={"username": "eve", "role": "admin", "password": PASSWORD, "csrf_token": "forged"},
    )
    assert answer.status_code == 403
    assert "Form expired" in answer.text
    assert all(u["username"] != "eve" for u in people.list_users(console, CONSOLE))
    sign_in_without_token = client(console).post(
        "/ui/login", data={"username": "root", "password": PASSWORD}
    )
    assert sign_in_without_token.status_code == 403


def test_care_cannot_open_administration_pages(console: Runtime) -> None:
    browser = signed_in(console, "carol")
    for path in ("/ui/people", "/ui/audit", "/ui/batches", "/ui/housekeeping", "/ui/distribution"):
        assert browser.get(path).status_code == 403, path
    page = browser.get("/ui/care")
    assert page.status_code == 200
    assert 'href="/ui/people"' not in page.text  # the menu offers only what the role may use
    answer = browser.post(
        "/ui/apikeys",
        data={"name": "mine", "role": "admin", "csrf_token": csrf_of(page.text)},
    )
    assert answer.status_code == 403


def test_a_scoped_care_person_sees_nothing_of_another_provider(console: Runtime) -> None:
    browser = signed_in(console, "carol")
    own = browser.get("/ui/care?msisdn=254700000001")
    assert own.status_code == 200
    assert "Subscriber 254700000001" in own.text
    other = browser.get("/ui/care?msisdn=254700000009")
    assert other.status_code == 403
    assert "254700000009" not in other.text.replace("msisdn=254700000009", "")


def test_an_operator_sees_batches_but_not_people(console: Runtime) -> None:
    browser = signed_in(console, "otto")
    assert browser.get("/ui/batches").status_code == 200
    assert browser.get("/ui/people").status_code == 403


def test_an_idle_session_sends_the_browser_back_to_sign_in(console: Runtime) -> None:
    browser = signed_in(console, "root")
    assert browser.get("/ui/").status_code == 200
    with console.engine.begin() as conn:
        conn.execute(update(t.ui_sessions).values(last_seen_at=utcnow() - timedelta(hours=1)))
    answer = browser.get("/ui/")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/ui/login")


def test_a_pin_lookup_is_a_post_and_the_pin_appears_nowhere_in_the_answer(
    console: Runtime,
) -> None:
    [(serial, pin)] = factories.active_batch(console, count=1)
    browser = signed_in(console, "root")
    page = browser.get("/ui/vouchers")
    answer = browser.post(
        "/ui/vouchers/by-pin", data={"pin": pin, "csrf_token": csrf_of(page.text)}
    )
    assert answer.status_code == 200
    assert f"Voucher {serial}" in answer.text
    assert pin not in answer.text
    assert 'method="post" action="/ui/vouchers/by-pin"' in page.text


def test_tables_download_as_csv(console: Runtime) -> None:
    factories.active_batch(console, count=3)
    browser = signed_in(console, "root")
    answer = browser.get("/ui/batches?format=csv")
    assert answer.headers["content-type"].startswith("text/csv")
    lines = answer.text.splitlines()
    assert lines[0].startswith("batch_id,state,voucher_type")
    assert len(lines) == 2


def test_the_blacklist_is_released_by_care(console: Runtime) -> None:
    with console.engine.begin() as conn:
        conn.execute(
            insert(t.pin_attempts).values(
                msisdn="254700000001",
                failures=5,
                blacklisted_until=utcnow() + timedelta(hours=1),
                updated_at=utcnow(),
            )
        )
    browser = signed_in(console, "carol")
    page = browser.get("/ui/care/blacklist")
    assert "254700000001" in page.text
    answer = browser.post(
        "/ui/care/blacklist/release",
        data={"msisdn": "254700000001", "csrf_token": csrf_of(page.text)},
    )
    assert answer.status_code == 303
    assert "254700000001" not in browser.get("/ui/care/blacklist").text


def test_console_routes_stay_out_of_the_openapi_schema(console: Runtime) -> None:
    paths = client(console).get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/ui")]


def test_admins_must_give_a_totp_code_when_required(console: Runtime) -> None:
    configure(console, ui_require_totp=True)
    browser = signed_in(console, "root")
    answer = browser.get("/ui/")
    assert answer.headers["location"] == "/ui/login/code"
    enrol = browser.get("/ui/login/code")
    assert "authenticator" in enrol.text


def test_admins_add_and_disable_partners(console: Runtime, partner_keys: PartnerKeys) -> None:
    browser = signed_in(console, "root")
    page = browser.get("/ui/distribution")
    added = browser.post(
        "/ui/partners",
        data={
            "name": "printshop",
            "public_key": partner_keys.good,
            "csrf_token": csrf_of(page.text),
        },
    )
    assert added.status_code == 303
    refused = browser.post(
        "/ui/partners",
        data={"name": "bad", "public_key": partner_keys.expired, "csrf_token": csrf_of(page.text)},
    )
    assert refused.status_code == 422
    assert "public key refused" in refused.text
    disabled = browser.post(
        "/ui/partners/printshop/disable", data={"csrf_token": csrf_of(page.text)}
    )
    assert disabled.status_code == 303
    [partner] = distribution.list_partners(console, CONSOLE)
    assert partner["state"] == "disabled"


def test_a_refused_form_comes_back_with_the_error_next_to_its_field(console: Runtime) -> None:
    browser = signed_in(console, "root")
    page = browser.get("/ui/batches")
    answer = browser.post(
        "/ui/batches",
        data={"voucher_type": "TOPUP10", "count": "0", "csrf_token": csrf_of(page.text)},
    )
    assert answer.status_code == 422
    field = re.search(
        r'<input id="f-count"[^>]*>\s*<small class="error" id="e-count">([^<]+)', answer.text
    )
    assert field is not None, answer.text
    assert "greater than or equal to 1" in field.group(1)
    assert 'aria-invalid="true"' in answer.text


def test_a_refused_redemption_on_behalf_never_echoes_the_pin(console: Runtime) -> None:
    browser = signed_in(console, "carol")
    page = browser.get("/ui/care?msisdn=254700000001")
    answer = browser.post(
        "/ui/care/redeem",
        data={
            "msisdn": "254700000001",
            "pin": "12345678901234",
            "reason": "",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert answer.status_code == 422
    assert "give a reason" in answer.text
    assert "12345678901234" not in answer.text
