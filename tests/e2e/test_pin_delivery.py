"""Electronic PINs delivered by SMS through the real Kannel (configured as the README
says): a sale with deliver_to_msisdn reaches the buyer's handset once, and neither
Kannel's logs nor ours keep the PINs."""

import queue
import re
import time

from tests import factories
from tests.api.conftest import bearer
from tests.channel_support import MSISDN, app_client
from tests.e2e.test_kannel import SENDSMS_PASSWORD, SHORT_CODE, Gateway, gateway
from tests.reseller_support import hand_over, inactive_batch, reseller, serials
from voms.config import Settings
from voms.runtime import Runtime, build_runtime

__all__ = ["gateway"]  # the fixture, imported for this module's tests


def _runtime(gateway: Gateway) -> Runtime:
    conf = (gateway.folder / "kannel.conf").read_text()
    found = re.search(r"sendsms-port = (\d+)", conf)
    assert found is not None
    settings = Settings(
        database_url=gateway.database_url,
        keys_file=gateway.folder / "voms-keys.json",
        kannel_sendsms_url=f"http://127.0.0.1:{found.group(1)}/cgi-bin/sendsms",
        kannel_sendsms_username="voms",
        kannel_sendsms_password=SENDSMS_PASSWORD,
        kannel_sendsms_from=SHORT_CODE,
    )
    return build_runtime(settings)


def test_a_sale_sends_its_pins_to_the_buyers_handset_once(gateway: Gateway) -> None:
    rt = _runtime(gateway)
    try:
        reseller(rt, "DIST")
        found = serials(rt, inactive_batch(rt, 5))
        hand_over(rt, "DIST", found[0], found[-1])
        key = bearer(factories.api_key(rt, "distributor", name="pos"))
        body = {
            "voucher_type": "TOPUP10",
            "count": 2,
            "request_id": "pos-1",
            "reseller": "DIST",
            "deliver_to_msisdn": f"+{MSISDN}",
        }
        with app_client(rt, **rt.settings.model_dump()) as client:
            sold = client.post("/api/v1/sales", json=body, headers=key)
            assert sold.status_code == 201, sold.text
            vouchers = sold.json()["vouchers"]
            delivered = sorted(gateway.smsc.expect(2))
            assert delivered == sorted(
                f"{SHORT_CODE} {MSISDN} text TOPUP10 PIN {v['pin']} (serial {v['serial']}, "
                f"valid until {v['expires_at'][:10]})"
                for v in vouchers
            )
            again = client.post("/api/v1/sales", json=body, headers=key)
            assert again.json() == sold.json()
        time.sleep(3)
        try:
            extra = gateway.smsc.received.get_nowait()
        except queue.Empty:
            extra = None
        assert extra is None, "a retried sale sent its PINs again"
    finally:
        rt.engine.dispose()
    logs = {
        name: (gateway.folder / name).read_text(errors="replace")
        for name in ("bearerbox.log", "smsbox.log", "access.log", "voms-serve.log")
    }
    for name, text in logs.items():
        for voucher in vouchers:
            assert voucher["pin"] not in text, f"{name} holds a PIN"
