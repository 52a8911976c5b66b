"""Partners, exports, download links and imports through the HTTP app."""

import csv
import hashlib
import io
import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests import factories
from tests.api.conftest import bearer
from tests.pgp import PartnerKeys
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.pins import with_check_digit
from voms.runtime import Runtime


@pytest.fixture
def catalog(rt: Runtime) -> None:
    factories.standard_catalog(rt)


@pytest.fixture
def distributor(rt: Runtime, catalog: None) -> dict[str, str]:
    return bearer(factories.api_key(rt, "distributor", "ACME"))


def add_partner(client: TestClient, who: dict[str, str], key: str, name: str = "printshop") -> Any:
    return client.post("/api/v1/partners", json={"name": name, "public_key": key}, headers=who)


def create_export(client: TestClient, who: dict[str, str], **body: Any) -> Any:
    return client.post(
        "/api/v1/exports", json={"partner": "printshop", "format": "csv", **body}, headers=who
    )


def test_a_distributor_exports_and_downloads_a_file_only_the_partner_opens(
    client: TestClient, rt: Runtime, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    assert add_partner(client, distributor, partner_keys.good).status_code == 201
    vouchers = factories.active_batch(rt, count=8)
    created = create_export(client, distributor, voucher_type="TOPUP10")
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["voucher_count"] == 8
    assert record["download_url"].startswith("http")

    download = client.get(record["download_url"], headers=distributor)
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/pgp-encrypted"
    assert hashlib.sha256(download.content).hexdigest() == record["sha256"]
    text = partner_keys.decrypt(download.content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["serial"], r["pin"]) for r in rows] == vouchers
    for _, pin in vouchers:
        assert pin not in created.text
        assert pin.encode() not in download.content

    listed = client.get("/api/v1/exports", headers=distributor).json()["items"]
    assert [e["export_id"] for e in listed] == [record["export_id"]]
    shown = client.get(f"/api/v1/exports/{record['export_id']}", headers=distributor).json()
    assert shown["sha256"] == record["sha256"]
    assert "download_url" not in shown


@pytest.mark.parametrize(("which", "reason"), [("expired", "expired"), ("revoked", "revoked")])
def test_expired_and_revoked_keys_are_refused_with_422(
    client: TestClient,
    distributor: dict[str, str],
    partner_keys: PartnerKeys,
    which: str,
    reason: str,
) -> None:
    answer = add_partner(client, distributor, getattr(partner_keys, which))
    assert answer.status_code == 422
    assert reason in answer.json()["detail"][0]["msg"]


def test_only_distributors_and_admins_manage_partners_and_exports(
    client: TestClient, rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    for role in ("operator", "care", "auditor", "channel"):
        who = bearer(factories.api_key(rt, role))
        assert add_partner(client, who, partner_keys.good).status_code == 403
        assert create_export(client, who, voucher_type="TOPUP10").status_code == 403
    assert client.get("/api/v1/partners").status_code == 401


def test_the_download_link_needs_the_right_provider_role_and_token(
    client: TestClient, rt: Runtime, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    factories.standard_catalog(rt, "BETA")
    add_partner(client, distributor, partner_keys.good)
    factories.active_batch(rt, count=2)
    url = create_export(client, distributor, voucher_type="TOPUP10").json()["download_url"]
    admin = bearer(factories.api_key(rt, "admin"))
    beta = bearer(factories.api_key(rt, "distributor", "BETA"))
    operator = bearer(factories.api_key(rt, "operator", "ACME"))

    assert client.get(url, headers=admin).status_code == 200
    assert client.get(url, headers=beta).status_code == 403
    assert client.get(url, headers=operator).status_code == 403
    assert client.get(url).status_code == 401
    wrong = url.split("?token=")[0] + "?token=not-the-token"
    assert client.get(wrong, headers=distributor).status_code == 403


def test_the_download_link_expires(
    client: TestClient, rt: Runtime, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    add_partner(client, distributor, partner_keys.good)
    factories.active_batch(rt, count=2)
    record = create_export(client, distributor, voucher_type="TOPUP10").json()
    expires = record["download_expires_at"]
    assert expires is not None
    # The clock moves past the link's end (VOMS_EXPORT_LINK_MINUTES, 60 by default).
    with rt.engine.begin() as conn:
        conn.execute(update(t.exports).values(download_expires_at=utcnow() - timedelta(seconds=1)))
    gone = client.get(record["download_url"], headers=distributor)
    assert gone.status_code == 410
    assert "expired" in gone.json()["detail"]


def test_exporting_again_needs_reissue(
    client: TestClient, rt: Runtime, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    add_partner(client, distributor, partner_keys.good)
    factories.active_batch(rt, count=3)
    assert create_export(client, distributor, voucher_type="TOPUP10").status_code == 201
    again = create_export(client, distributor, voucher_type="TOPUP10")
    assert again.status_code == 409
    assert "reissue" in again.json()["detail"]
    reissued = create_export(client, distributor, voucher_type="TOPUP10", reissue=True)
    assert reissued.status_code == 201
    assert reissued.json()["reissued_count"] == 3


def test_a_retried_export_request_gives_the_same_export_and_a_fresh_link(
    client: TestClient, rt: Runtime, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    add_partner(client, distributor, partner_keys.good)
    factories.active_batch(rt, count=3)
    first = create_export(client, distributor, voucher_type="TOPUP10", request_id="x-1").json()
    again = create_export(client, distributor, voucher_type="TOPUP10", request_id="x-1")
    assert again.status_code == 201
    assert again.json()["export_id"] == first["export_id"]
    assert client.get(again.json()["download_url"], headers=distributor).status_code == 200
    assert client.get(first["download_url"], headers=distributor).status_code == 403
    assert len(client.get("/api/v1/exports", headers=distributor).json()["items"]) == 1


def test_bad_export_requests_are_422_and_unknown_names_404(
    client: TestClient, rt: Runtime, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    add_partner(client, distributor, partner_keys.good)
    assert create_export(client, distributor).status_code == 422
    assert (
        create_export(client, distributor, voucher_type="TOPUP10", format="pdf").status_code == 422
    )
    assert create_export(client, distributor, partner="nobody", batch_id=1).status_code == 404
    assert create_export(client, distributor, batch_id=12345).status_code == 404


def test_partners_are_listed_shown_and_disabled(
    client: TestClient, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    created = add_partner(client, distributor, partner_keys.good).json()
    assert created["service_provider"] == "ACME"  # the key's scope
    listed = client.get("/api/v1/partners", headers=distributor).json()
    assert listed == {"items": [created], "next_cursor": None}
    assert client.get("/api/v1/partners/printshop", headers=distributor).json() == created
    disabled = client.post("/api/v1/partners/printshop/disable", headers=distributor)
    assert disabled.json()["state"] == "disabled"
    assert add_partner(client, distributor, partner_keys.other).status_code == 409


def test_an_import_reports_bad_lines_or_creates_a_batch(
    client: TestClient, rt: Runtime, catalog: None
) -> None:
    operator = bearer(factories.api_key(rt, "operator", "ACME"))
    pin = with_check_digit("1234567890123")
    bad = client.post(
        "/api/v1/imports",
        json={"csv": f"serial,pin,voucher_type,expires_at\n1,{pin},TOPUP10,2099-01-01\n2,12,X,\n"},
        headers=operator,
    )
    assert bad.status_code == 422
    assert bad.json()["bad_lines"] == [{"line": 3, "reason": "unknown voucher type 'X'"}]
    good = client.post(
        "/api/v1/imports", json={"csv": f"1,{pin},TOPUP10,2099-01-01\n"}, headers=operator
    )
    assert good.status_code == 201, good.text
    assert good.json()["state"] == "generated"
    assert pin not in good.text + bad.text
    distributor = bearer(factories.api_key(rt, "distributor", "ACME"))
    refused = client.post("/api/v1/imports", json={"csv": ""}, headers=distributor)
    assert refused.status_code == 403


def test_a_partner_gets_a_new_key_only_if_it_is_usable(
    client: TestClient, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    add_partner(client, distributor, partner_keys.good)
    url = "/api/v1/partners/printshop/public-key"
    refused = client.put(url, json={"public_key": partner_keys.expired}, headers=distributor)
    assert refused.status_code == 422
    renewed = client.put(url, json={"public_key": partner_keys.other}, headers=distributor)
    assert renewed.status_code == 200
    assert renewed.json()["key_user_ids"] == ["Retail Chain <keys@retail.example>"]


def test_a_large_export_answers_at_once_and_shows_its_progress_until_its_link_works(
    client: TestClient, rt: Runtime, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    rt.settings = rt.settings.model_copy(update={"background_export_threshold": 3})
    add_partner(client, distributor, partner_keys.good)
    vouchers = factories.active_batch(rt, count=8)
    created = create_export(client, distributor, voucher_type="TOPUP10")
    assert created.status_code == 201, created.text
    record = created.json()
    assert (record["state"], record["voucher_count"]) == ("exporting", 8)
    assert record["download_url"].startswith("http")
    shown: dict[str, Any] = {}
    for _ in range(600):
        shown = client.get(f"/api/v1/exports/{record['export_id']}", headers=distributor).json()
        assert shown["state"] in ("exporting", "exported")
        if shown["state"] == "exported":
            break
        time.sleep(0.05)
    assert (shown["state"], shown["exported_count"], shown["error"]) == ("exported", 8, None)
    download = client.get(record["download_url"], headers=distributor)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == shown["sha256"]
    rows = list(csv.DictReader(io.StringIO(partner_keys.decrypt(download.content).decode())))
    assert [(r["serial"], r["pin"]) for r in rows] == vouchers


def test_the_link_of_an_export_still_running_answers_409(
    client: TestClient, rt: Runtime, distributor: dict[str, str], partner_keys: PartnerKeys
) -> None:
    add_partner(client, distributor, partner_keys.good)
    factories.active_batch(rt, count=2)
    record = create_export(client, distributor, voucher_type="TOPUP10").json()
    with rt.engine.begin() as conn:  # as it is while the export runs
        conn.execute(update(t.exports).values(state="exporting"))
    running = client.get(record["download_url"], headers=distributor)
    assert running.status_code == 409
    assert "exporting" in running.json()["detail"]
