"""The session store of menu channels: state between callbacks, expiry, racing steps."""

from datetime import timedelta

import pytest

from voms.db.types import utcnow
from voms.domain.errors import Forbidden
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services import channel_sessions, housekeeping
from voms.services.auth import CONSOLE, Principal

USSD = Principal(name="ussd", role=Role.CHANNEL)


def test_a_saved_state_is_found_by_the_next_step(rt: Runtime) -> None:
    session = channel_sessions.load(rt, USSD, "ussd", "s1", "254700000001")
    assert session.is_new
    session.state["step"] = "pin"
    assert channel_sessions.save(rt, USSD, session, timeout_s=60)
    found = channel_sessions.load(rt, USSD, "ussd", "s1", "254700000001")
    assert (found.state, found.version, found.expired) == ({"step": "pin"}, 1, False)


def test_of_two_processes_taking_the_same_step_only_one_saves(rt: Runtime) -> None:
    channel_sessions.save(rt, USSD, channel_sessions.load(rt, USSD, "ussd", "s", "2547"), 60)
    first = channel_sessions.load(rt, USSD, "ussd", "s", "2547")
    second = channel_sessions.load(rt, USSD, "ussd", "s", "2547")
    first.state["step"] = "a"
    second.state["step"] = "b"
    assert channel_sessions.save(rt, USSD, first, 60)
    assert not channel_sessions.save(rt, USSD, second, 60)
    assert channel_sessions.load(rt, USSD, "ussd", "s", "2547").state == {"step": "a"}
    fresh = channel_sessions.load(rt, USSD, "ussd", "new", "2547")
    again = channel_sessions.load(rt, USSD, "ussd", "new", "2547")
    assert channel_sessions.save(rt, USSD, fresh, 60)
    assert not channel_sessions.save(rt, USSD, again, 60)


def test_a_session_past_its_time_is_expired_and_purged(rt: Runtime) -> None:
    now = utcnow()
    channel_sessions.save(
        rt, USSD, channel_sessions.load(rt, USSD, "ussd", "s", "2547"), 10, now=now
    )
    later = now + timedelta(seconds=11)
    assert channel_sessions.load(rt, USSD, "ussd", "s", "2547", now=later).expired
    assert channel_sessions.purge_expired(rt, USSD, now=now) == 0
    assert channel_sessions.purge_expired(rt, USSD, now=later) == 1
    assert channel_sessions.load(rt, USSD, "ussd", "s", "2547", now=later).is_new


def test_only_redeeming_principals_use_sessions(rt: Runtime) -> None:
    with pytest.raises(Forbidden):
        channel_sessions.load(rt, Principal("x", Role.AUDITOR), "ussd", "s", "2547")


def test_the_housekeeping_job_purges_sessions_past_their_time(rt: Runtime) -> None:
    past = utcnow() - timedelta(minutes=5)
    old = channel_sessions.load(rt, USSD, "ussd", "old", "2547", now=past)
    channel_sessions.save(rt, USSD, old, 10, now=past)
    channel_sessions.save(rt, USSD, channel_sessions.load(rt, USSD, "ussd", "live", "2547"), 600)

    run = housekeeping.run_job(rt, CONSOLE, "channel_session_purge")

    assert (run["outcome"], run["rows_affected"]) == ("succeeded", 1)
    assert channel_sessions.load(rt, USSD, "ussd", "old", "2547").is_new
    assert not channel_sessions.load(rt, USSD, "ussd", "live", "2547").is_new
