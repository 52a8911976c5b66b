"""People of the web console: passwords, lockout, sessions and their timeouts, TOTP."""

from datetime import timedelta

import pyotp
import pytest
from sqlalchemy import select, update

from tests import factories
from tests.channel_support import configure
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services import audit, people
from voms.services.auth import CONSOLE, Principal

PASSWORD = "correct horse battery"


def _person(rt: Runtime, name: str = "alice", role: str = "care", sp: str | None = None) -> None:
    people.create_user(
        rt, CONSOLE, username=name, role=role, password=PASSWORD, service_provider=sp
    )


def test_a_password_is_stored_as_an_argon2id_hash_never_in_clear(rt: Runtime) -> None:
    _person(rt)
    with rt.engine.connect() as conn:
        stored = conn.execute(select(t.users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_signing_in_opens_a_session_that_acts_with_the_persons_role_and_scope(
    rt: Runtime,
) -> None:
    factories.service_provider(rt, "ACME")
    _person(rt, sp="ACME")
    token = people.sign_in(rt, "alice", PASSWORD)
    session = people.session_of(rt, token)
    assert session is not None
    assert session.principal.name == "user:alice"
    assert session.principal.role is Role.CARE
    assert session.service_provider == "ACME"
    assert not session.second_factor_due
    entries = audit.read_audit_log(rt, CONSOLE, action="user.sign_in")
    assert [e["actor"] for e in entries] == ["user:alice"]


def test_an_unknown_name_and_a_wrong_password_are_refused_alike(rt: Runtime) -> None:
    _person(rt)
    with pytest.raises(people.SignInRefused) as unknown:
        people.sign_in(rt, "mallory", PASSWORD)
    with pytest.raises(people.SignInRefused) as wrong:
        people.sign_in(rt, "alice", "not the password")
    assert unknown.value.detail == wrong.value.detail


def test_repeated_failures_lock_the_account_even_for_the_right_password(rt: Runtime) -> None:
    configure(rt, ui_max_failed_sign_ins=3)
    _person(rt)
    for _ in range(3):
        with pytest.raises(people.SignInRefused):
            people.sign_in(rt, "alice", "wrong password!")
    with pytest.raises(people.SignInRefused):
        people.sign_in(rt, "alice", PASSWORD)
    [listed] = people.list_users(rt, CONSOLE)
    assert listed["locked_until"] is not None
    # A new password from an admin lifts the lockout.
    people.reset_password(rt, CONSOLE, "alice", "another good password")
    assert people.sign_in(rt, "alice", "another good password")


def test_a_lockout_ends_by_itself(rt: Runtime) -> None:
    configure(rt, ui_max_failed_sign_ins=1)
    _person(rt)
    with pytest.raises(people.SignInRefused):
        people.sign_in(rt, "alice", "wrong password!")
    with rt.engine.begin() as conn:
        conn.execute(update(t.users).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert people.sign_in(rt, "alice", PASSWORD)


def test_a_session_ends_after_the_idle_timeout(rt: Runtime) -> None:
    _person(rt)
    token = people.sign_in(rt, "alice", PASSWORD)
    idle = timedelta(minutes=rt.settings.ui_session_idle_minutes)
    with rt.engine.begin() as conn:
        conn.execute(update(t.ui_sessions).values(last_seen_at=utcnow() - idle))
    assert people.session_of(rt, token) is None
    with rt.engine.connect() as conn:  # and it is gone for good
        assert conn.execute(select(t.ui_sessions)).first() is None


def test_a_session_ends_at_its_absolute_expiry_however_busy(rt: Runtime) -> None:
    _person(rt)
    token = people.sign_in(rt, "alice", PASSWORD)
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.ui_sessions).values(
                last_seen_at=utcnow(), expires_at=utcnow() - timedelta(seconds=1)
            )
        )
    assert people.session_of(rt, token) is None


def test_disabling_a_person_ends_their_sessions_and_refuses_sign_in(rt: Runtime) -> None:
    _person(rt)
    token = people.sign_in(rt, "alice", PASSWORD)
    people.disable_user(rt, CONSOLE, "alice")
    assert people.session_of(rt, token) is None
    with pytest.raises(people.SignInRefused):
        people.sign_in(rt, "alice", PASSWORD)


def test_sign_out_ends_the_session(rt: Runtime) -> None:
    _person(rt)
    token = people.sign_in(rt, "alice", PASSWORD)
    people.sign_out(rt, token)
    assert people.session_of(rt, token) is None


def test_weak_passwords_unknown_roles_and_duplicates_are_refused(rt: Runtime) -> None:
    with pytest.raises(Invalid):
        people.create_user(rt, CONSOLE, username="bob", role="care", password="short")
    with pytest.raises(Invalid):
        people.create_user(rt, CONSOLE, username="bob", role="king", password=PASSWORD)
    with pytest.raises(Invalid):
        people.create_user(rt, CONSOLE, username="bo b", role="care", password=PASSWORD)
    _person(rt, "bob")
    with pytest.raises(Conflict):
        _person(rt, "bob")


def test_only_admins_manage_people_and_a_scoped_admin_only_its_own(rt: Runtime) -> None:
    factories.service_provider(rt, "ACME")
    factories.service_provider(rt, "OTHER")
    operator = Principal(name="op", role=Role.OPERATOR)
    with pytest.raises(Forbidden):
        people.create_user(rt, operator, username="bob", role="care", password=PASSWORD)
    acme_admin = Principal(name="acme", role=Role.ADMIN, service_provider_id=1)
    with pytest.raises(Forbidden):
        people.create_user(
            rt, acme_admin, username="bob", role="care", password=PASSWORD, service_provider="OTHER"
        )
    with pytest.raises(Forbidden):
        people.create_user(rt, acme_admin, username="bob", role="admin", password=PASSWORD)
    _person(rt, "carol", sp="OTHER")
    assert people.list_users(rt, acme_admin) == []
    with pytest.raises(Forbidden):
        people.disable_user(rt, acme_admin, "carol")


def test_admins_must_enrol_a_second_factor_when_totp_is_required(rt: Runtime) -> None:
    configure(rt, ui_require_totp=True)
    _person(rt, "root", role="admin")
    token = people.sign_in(rt, "root", PASSWORD)
    session = people.session_of(rt, token)
    assert session is not None
    assert session.second_factor_due
    assert session.must_enrol
    secret = people.new_totp_secret()
    with pytest.raises(people.SignInRefused):
        people.verify_second_factor(rt, token, "000000", secret)
    people.verify_second_factor(rt, token, pyotp.TOTP(secret).now(), secret)
    session = people.session_of(rt, token)
    assert session is not None
    assert not session.second_factor_due
    with rt.engine.connect() as conn:  # kept encrypted, never in clear
        stored = conn.execute(select(t.users.c.totp_secret)).scalar_one()
    assert secret.encode() not in stored
    # The next sign-in asks for the code of the enrolled secret.
    later = people.sign_in(rt, "root", PASSWORD)
    again = people.session_of(rt, later)
    assert again is not None
    assert again.second_factor_due
    assert not again.must_enrol
    people.verify_second_factor(rt, later, pyotp.TOTP(secret).now())


def test_care_people_need_no_second_factor_when_only_admins_must(rt: Runtime) -> None:
    configure(rt, ui_require_totp=True)
    _person(rt, "alice", role="care")
    session = people.session_of(rt, people.sign_in(rt, "alice", PASSWORD))
    assert session is not None
    assert not session.second_factor_due


def test_wrong_totp_codes_count_towards_the_lockout(rt: Runtime) -> None:
    configure(rt, ui_require_totp=True, ui_max_failed_sign_ins=2)
    _person(rt, "root", role="admin")
    token = people.sign_in(rt, "root", PASSWORD)
    secret = people.new_totp_secret()
    for _ in range(2):
        with pytest.raises(people.SignInRefused):
            people.verify_second_factor(rt, token, "000000", secret)
    # Locked now: even the right code is refused.
    with pytest.raises(people.SignInRefused):
        people.verify_second_factor(rt, token, pyotp.TOTP(secret).now(), secret)
    assert [e["action"] for e in audit.read_audit_log(rt, CONSOLE, action="user.locked")] == [
        "user.locked"
    ]


def test_the_right_password_alone_does_not_reset_the_count_of_wrong_codes(rt: Runtime) -> None:
    configure(rt, ui_require_totp=True, ui_max_failed_sign_ins=3)
    _person(rt, "root", role="admin")
    secret = people.new_totp_secret()
    for _ in range(3):  # each time the password again, then a wrong code
        token = people.sign_in(rt, "root", PASSWORD)
        with pytest.raises(people.SignInRefused):
            people.verify_second_factor(rt, token, "000000", secret)
    with pytest.raises(people.SignInRefused):  # locked
        people.sign_in(rt, "root", PASSWORD)
