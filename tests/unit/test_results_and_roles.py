from voms.domain.results import Result
from voms.domain.roles import Permission, Role, allows


def test_result_codes_are_unique_and_carry_text_and_status() -> None:
    codes = [r.code for r in Result]
    assert len(codes) == len(set(codes))
    assert Result.from_code(2009) is Result.ALREADY_REDEEMED
    assert Result.ALREADY_REDEEMED.text == "Voucher already redeemed"
    assert Result.SUBSCRIBER_BLACKLISTED.http_status == 403


def test_the_channel_role_may_redeem_but_not_change_the_catalog() -> None:
    assert allows(Role.CHANNEL, Permission.REDEEM)
    assert not allows(Role.CHANNEL, Permission.CATALOG_WRITE)


def test_the_auditor_only_reads() -> None:
    assert allows(Role.AUDITOR, Permission.AUDIT_READ)
    writes = {
        p for p in Permission if "write" in p.value or p in {Permission.REDEEM, Permission.EXPORT}
    }
    assert not any(allows(Role.AUDITOR, p) for p in writes)


def test_admin_may_do_everything() -> None:
    assert all(allows(Role.ADMIN, p) for p in Permission)
