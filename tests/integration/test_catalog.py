import pytest
from sqlalchemy import update

from tests import factories
from voms.caching import ReadCache
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services import audit, auth, catalog
from voms.services.auth import CONSOLE, Principal


def test_a_voucher_type_comes_back_with_its_scenarios(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    vt = catalog.get_voucher_type(rt, CONSOLE, "TOPUP10")
    assert vt["service_provider"] == "ACME"
    assert vt["scenarios"] == [
        {
            "number": 1,
            "name": "10 KES",
            "default": True,
            "credits": [
                {"balance_type": "CASH", "amount": 1000, "balance_expiry_extension_days": 30}
            ],
            "account_expiry_extension_days": 60,
            "new_product_type": None,
        }
    ]


def test_a_duplicate_code_with_other_fields_is_a_conflict_naming_them(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    with pytest.raises(Conflict, match="balance type 'CASH' already exists with other max_balance"):
        factories.balance_type(rt, "CASH", max_balance=5)
    with pytest.raises(
        Conflict, match="voucher type 'TOPUP10' already exists with other pin_length"
    ):
        factories.voucher_type(rt, "TOPUP10", pin_length=16)
    assert factories.balance_type(rt, "CASH")["code"] == "CASH"  # the same again: itself


def test_an_unknown_reference_names_what_is_missing(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    with pytest.raises(NotFound, match="balance type 'DATA' not found"):
        factories.voucher_type(
            rt,
            "X",
            scenarios=[
                {"number": 1, "name": "d", "credits": [{"balance_type": "DATA", "amount": 5}]}
            ],
        )
    with pytest.raises(NotFound, match="product type 'PLATINUM' not found"):
        factories.voucher_type(rt, "Y", allowed_product_types=["PLATINUM"])
    with pytest.raises(NotFound, match="service provider 'NOPE' not found"):
        factories.balance_type(rt, "CASH", sp="NOPE")


def test_a_failed_create_leaves_nothing_behind(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    with pytest.raises(NotFound):
        factories.voucher_type(
            rt,
            "HALF",
            scenarios=[
                {"number": 1, "name": "d", "credits": [{"balance_type": "DATA", "amount": 5}]}
            ],
        )
    with pytest.raises(NotFound):
        catalog.get_voucher_type(rt, CONSOLE, "HALF")


def test_balance_types_of_another_provider_cannot_be_used(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.service_provider(rt, "OTHER")
    with pytest.raises(NotFound, match="balance type 'CASH'"):
        factories.voucher_type(rt, "OTHER10", sp="OTHER")


def test_scenario_rules_are_checked(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    twice = {"number": 1, "name": "a", "credits": [{"balance_type": "CASH", "amount": 1}]}
    with pytest.raises(Invalid, match="unique"):
        factories.voucher_type(rt, "DUP", scenarios=[twice, twice])
    with pytest.raises(Invalid, match="at most one"):
        factories.voucher_type(
            rt,
            "DEF",
            scenarios=[{**twice, "default": True}, {**twice, "number": 2, "default": True}],
        )


def test_updating_scenarios_replaces_them_and_is_audited(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    body = catalog.VoucherTypeUpdate.model_validate(
        {
            "name": "Ten",
            "scenarios": [
                {"number": 1, "name": "SMS", "credits": [{"balance_type": "SMS", "amount": 10}]},
                {
                    "number": 2,
                    "name": "Gold",
                    "credits": [],
                    "new_product_type": "GOLD",
                    "account_expiry_extension_days": 30,
                },
            ],
        }
    )
    vt = catalog.update_voucher_type(rt, CONSOLE, "TOPUP10", body)
    assert vt["name"] == "Ten"
    assert [s["number"] for s in vt["scenarios"]] == [1, 2]
    assert vt["scenarios"][1]["new_product_type"] == "GOLD"
    with rt.engine.connect() as conn:
        entries = audit.list_entries(conn, object_type="voucher_type", object_id="TOPUP10")
    assert [e["action"] for e in entries] == ["voucher_type.update", "voucher_type.create"]
    assert entries[0]["actor"] == "console"


def test_a_scoped_key_sees_and_changes_only_its_provider(rt: Runtime) -> None:
    factories.standard_catalog(rt, "ACME")
    factories.standard_catalog(rt, "BETA")
    with rt.engine.connect() as conn:
        beta_id = auth.service_provider_id_by_code(conn, "BETA")
    beta_operator = Principal(name="beta-op", role=Role.OPERATOR, service_provider_id=beta_id)
    assert [b["service_provider"] for b in catalog.list_balance_types(rt, beta_operator)] == [
        "BETA",
        "BETA",
    ]
    with pytest.raises(Forbidden):
        catalog.get_voucher_type(rt, beta_operator, "TOPUP10")
    with pytest.raises(Forbidden):
        catalog.create_balance_type(
            rt,
            beta_operator,
            catalog.BalanceTypeIn(code="DATA", name="Data", unit="MB", service_provider="ACME"),
        )
    with pytest.raises(Forbidden):
        catalog.create_service_provider(
            rt, beta_operator, catalog.ServiceProviderIn(code="C", name="C")
        )


def test_api_keys_are_stored_hashed_and_can_be_revoked(rt: Runtime) -> None:
    factories.service_provider(rt)
    secret = factories.api_key(rt, "channel", "ACME", name="ussd")
    principal = auth.authenticate(rt, secret)
    assert principal is not None
    assert principal.role is Role.CHANNEL
    with rt.engine.connect() as conn:
        assert secret not in str(conn.exec_driver_sql("SELECT * FROM api_keys").all())
    auth.revoke_api_key(rt, CONSOLE, "ussd")
    assert auth.authenticate(rt, secret) is None
    with pytest.raises(Invalid, match="unknown role"):
        auth.create_api_key(rt, CONSOLE, name="x", role="root")
    with pytest.raises(Conflict):
        factories.api_key(rt, "channel", "ACME", name="ussd")


def test_a_cached_key_is_checked_again_in_the_background_before_its_entry_expires(
    rt: Runtime,
) -> None:
    """The event loop answers from the cache; from half the entry's life a thread of its
    own reads the key again, so a key revoked by another process stops working without
    any request waiting for the database."""
    clock = factories.Clock()
    rt.caches["api_keys"] = ReadCache[Principal | None](auth.KEY_CACHE_SECONDS, clock=clock)
    factories.service_provider(rt)
    secret = factories.api_key(rt, "channel", "ACME", name="ussd")
    assert auth.cached_principal(rt, secret) == (False, None)
    assert auth.authenticate(rt, secret) is not None
    with rt.engine.begin() as conn:  # as another process would: this cache is not cleared
        conn.execute(update(t.api_keys).values(revoked_at=utcnow()))
    clock.now += auth.KEY_CACHE_SECONDS * 0.6
    known, principal = auth.cached_principal(rt, secret)
    assert known
    assert principal is not None  # answered at once, from the cache
    auth.wait_for_refreshes()
    assert auth.cached_principal(rt, secret) == (True, None)
