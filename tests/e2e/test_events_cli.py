"""`voms webhook …` and `voms events deliveries|replay`, run as processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import factories
from tests.events_support import SECRET, WebhookReceiver, run_cycle
from voms.config import Settings
from voms.runtime import Runtime
from voms.services.auth import CONSOLE
from voms.services.events.relay import Relay
from voms.services.redemption import RedemptionRequest, redeem

VOMS = str(Path(sys.executable).with_name("voms"))


def _voms(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env |= {"VOMS_DATABASE_URL": settings.database_url, "VOMS_KEYS_FILE": str(settings.keys_file)}
    return subprocess.run(
        [VOMS, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_webhooks_are_added_listed_and_their_deliveries_replayed_from_the_cli(
    rt: Runtime, settings: Settings
) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, "254700000001")
    (_, pin), *_ = factories.active_batch(rt, count=1)
    with WebhookReceiver() as receiver:
        refused = _voms(settings, "webhook", "add", "--url", receiver.url, "--events", "x.y")
        assert refused.returncode != 0
        assert "--secret-stdin" in refused.stderr
        bad = _voms(
            settings,
            "webhook",
            "add",
            "--url",
            receiver.url,
            "--events",
            "voucher.eaten",
            "--secret-stdin",
            stdin=SECRET + "\n",
        )
        assert bad.returncode != 0
        assert "unknown event types: voucher.eaten" in bad.stderr
        assert SECRET not in bad.stderr + bad.stdout
        added = _voms(
            settings,
            "webhook",
            "add",
            "--url",
            receiver.url,
            "--events",
            "voucher.redeemed",
            "--secret-stdin",
            stdin=SECRET + "\n",
        )
        assert added.returncode == 0, added.stderr
        assert SECRET not in added.stdout
        hook = json.loads(added.stdout)
        listed = json.loads(_voms(settings, "webhook", "list").stdout)
        assert [w["id"] for w in listed["items"]] == [hook["id"]]
        redeem(rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pin))
        relay = Relay(rt)
        run_cycle(relay)
        assert receiver.bad_signatures == 0
        (event_id,) = receiver.ids()
        delivered = json.loads(
            _voms(settings, "events", "deliveries", "--state", "delivered").stdout
        )
        (delivery,) = delivered["items"]
        assert delivery["event_id"] == event_id
        replayed = _voms(settings, "events", "replay", "--delivery", str(delivery["id"]))
        assert json.loads(replayed.stdout)["replayed"] == 1
        run_cycle(relay)
        assert receiver.ids() == [event_id, event_id]  # the same event, the same id
        assert receiver.bodies[0] == receiver.bodies[1]
        neither = _voms(settings, "events", "replay")
        assert neither.returncode != 0
        removed = _voms(settings, "webhook", "remove", str(hook["id"]))
        assert json.loads(removed.stdout)["state"] == "disabled"
