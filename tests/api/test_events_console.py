"""The console's events page: destinations, deliveries, dead letters and their replay."""

from datetime import timedelta

from sqlalchemy import select, update

from tests import factories
from tests.api.test_console import console, csrf_of, signed_in  # noqa: F401 (fixture)
from tests.events_support import SECRET, WebhookReceiver, run_cycle
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services.auth import CONSOLE
from voms.services.events import destinations
from voms.services.events.relay import Relay
from voms.services.redemption import RedemptionRequest, redeem


def test_an_admin_sees_a_dead_letter_and_replays_it(console: Runtime) -> None:  # noqa: F811
    rt = console
    pin = factories.active_batch(rt, count=1)[0][1]
    with WebhookReceiver() as receiver:
        destinations.add_webhook(
            rt,
            CONSOLE,
            destinations.WebhookIn(url=receiver.url, secret=SECRET, events=["voucher.redeemed"]),
        )
        redeem(rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pin))
        relay = Relay(rt)
        receiver.fail_with = 500
        run_cycle(relay)
        q = t.event_deliveries
        with rt.engine.begin() as conn:
            conn.execute(
                update(q).values(
                    first_failed_at=utcnow() - timedelta(days=2), next_attempt_at=utcnow()
                )
            )
        run_cycle(relay)
        with rt.engine.connect() as conn:
            dead = conn.execute(select(q.c.id).where(q.c.state == "dead")).scalar_one()
        browser = signed_in(rt, "root")
        page = browser.get("/ui/events?state=dead")
        assert page.status_code == 200
        assert receiver.url in page.text
        assert f"Replay delivery {dead}" in page.text
        assert "HTTP 500" in page.text
        receiver.fail_with = None
        answer = browser.post(
            "/ui/events/replay", data={"delivery_id": str(dead), "csrf_token": csrf_of(page.text)}
        )
        assert answer.status_code == 303
        assert "Replay delivery" not in browser.get("/ui/events?state=dead").text
        run_cycle(relay)
        assert len(receiver.ids()) == 1
        refused = browser.post(
            "/ui/events/replay", data={"delivery_id": "x", "csrf_token": csrf_of(page.text)}
        )
        assert refused.status_code == 422


def test_only_admins_open_the_events_page(console: Runtime) -> None:  # noqa: F811
    for name in ("carol", "otto"):
        browser = signed_in(console, name)
        assert browser.get("/ui/events").status_code == 403
        assert 'href="/ui/events"' not in browser.get("/ui/").text
    assert 'href="/ui/events"' in signed_in(console, "root").get("/ui/").text
