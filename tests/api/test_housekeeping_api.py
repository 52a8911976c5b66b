"""Housekeeping over HTTP: jobs, runs with filters and paging, starting a job, roles."""

import time
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update

from tests import factories
from tests.api.conftest import bearer
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime


def wait_for(client: TestClient, headers: dict[str, str], run_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run: dict[str, Any] = client.get(
            f"/api/v1/housekeeping/runs/{run_id}", headers=headers
        ).json()
        if run["outcome"] != "running":
            return run
        time.sleep(0.05)
    raise AssertionError("the run did not finish")


def test_an_operator_starts_a_job_and_reads_its_run(client: TestClient, rt: Runtime) -> None:
    factories.standard_catalog(rt)
    pairs = factories.active_batch(rt, count=5)
    with rt.engine.begin() as conn:
        conn.execute(update(t.batches).values(expires_at=utcnow() - timedelta(days=400)))
    operator = bearer(factories.api_key(rt, "operator"))

    started = client.post("/api/v1/housekeeping/jobs/voucher_archive/run", headers=operator)

    assert started.status_code == 202, started.text
    assert started.json()["trigger"] == "api"
    run = wait_for(client, operator, started.json()["id"])
    assert (run["outcome"], run["rows_affected"]) == ("succeeded", 5)
    found = client.get(f"/api/v1/vouchers/{pairs[0][0]}", headers=operator).json()
    assert (found["state"], found["archived"]) == ("expired", True)
    assert "pin" not in found
    jobs = {
        job["name"]: job
        for job in client.get("/api/v1/housekeeping/jobs", headers=operator).json()["items"]
    }
    assert set(jobs) == {
        "reservation_timeouts",
        "charging_settlement",
        "blacklist_release",
        "request_id_purge",
        "channel_session_purge",
        "export_file_purge",
        "expiry_counts",
        "voucher_archive",
        "alert_detection",
        "alert_delivery",
        "key_reencryption",
        "report_rollups",
        "transaction_feed",
        "account_lifecycle",
        "balance_expiry",
        "recharge_counter_purge",
    }
    assert jobs["voucher_archive"]["last_run"]["id"] == run["id"]
    assert jobs["voucher_archive"]["schedule"] == "30 2 * * *"


def test_runs_are_filtered_and_paged(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    ids = []
    for job in ("blacklist_release", "request_id_purge", "blacklist_release"):
        started = client.post(f"/api/v1/housekeeping/jobs/{job}/run", headers=admin)
        ids.append(wait_for(client, admin, started.json()["id"])["id"])

    page = client.get(
        "/api/v1/housekeeping/runs", params={"job": "blacklist_release", "limit": 1}, headers=admin
    ).json()
    assert [run["id"] for run in page["runs"]] == [ids[2]]
    rest = client.get(
        "/api/v1/housekeeping/runs",
        params={"job": "blacklist_release", "cursor": page["next_cursor"]},
        headers=admin,
    ).json()
    assert [run["id"] for run in rest["runs"]] == [ids[0]]
    assert rest["next_cursor"] is None
    failed = client.get("/api/v1/housekeeping/runs", params={"outcome": "failed"}, headers=admin)
    assert failed.json()["runs"] == []
    assert (
        client.get(
            "/api/v1/housekeeping/runs", params={"outcome": "odd"}, headers=admin
        ).status_code
        == 422
    )
    assert (
        client.get("/api/v1/housekeeping/runs", params={"job": "nope"}, headers=admin).status_code
        == 404
    )


def test_roles(client: TestClient, rt: Runtime) -> None:
    auditor = bearer(factories.api_key(rt, "auditor"))
    channel = bearer(factories.api_key(rt, "channel"))
    care = bearer(factories.api_key(rt, "care"))
    assert client.get("/api/v1/housekeeping/jobs", headers=auditor).status_code == 200
    assert client.get("/api/v1/housekeeping/runs", headers=auditor).status_code == 200
    assert (
        client.post("/api/v1/housekeeping/jobs/blacklist_release/run", headers=auditor).status_code
        == 403
    )
    for who in (channel, care):
        assert client.get("/api/v1/housekeeping/jobs", headers=who).status_code == 403
        assert (
            client.post("/api/v1/housekeeping/jobs/blacklist_release/run", headers=who).status_code
            == 403
        )
    assert client.get("/api/v1/housekeeping/jobs").status_code == 401
    admin = bearer(factories.api_key(rt, "admin"))
    assert client.post("/api/v1/housekeeping/jobs/nope/run", headers=admin).status_code == 404


def test_a_job_already_running_answers_409(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    from voms.services.housekeeping import runner

    held = runner.claim(rt, "expiry_counts", "cli")
    answer = client.post("/api/v1/housekeeping/jobs/expiry_counts/run", headers=admin)
    assert answer.status_code == 409
    runner.execute(rt, held)
    assert (
        client.post("/api/v1/housekeeping/jobs/expiry_counts/run", headers=admin).status_code == 202
    )
