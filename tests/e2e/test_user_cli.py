"""`voms user …` as an operator runs it: a real process, the password on standard input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import reseller_support
from voms.config import Settings
from voms.runtime import Runtime, build_runtime
from voms.services import people
from voms.services.resellers import accounts

VOMS = str(Path(sys.executable).with_name("voms"))
PASSWORD = "correct horse battery"


def _voms(
    database_url: str, keys_file: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env.update(VOMS_DATABASE_URL=database_url, VOMS_KEYS_FILE=str(keys_file))
    return subprocess.run(
        [VOMS, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_people_are_created_listed_given_a_password_and_disabled(
    database_url: str, keys_file: Path
) -> None:
    created = _voms(
        database_url,
        keys_file,
        "user",
        "create",
        "--username",
        "alice",
        "--role",
        "care",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    assert PASSWORD not in created.stdout + created.stderr
    listed = json.loads(_voms(database_url, keys_file, "user", "list").stdout)
    assert [(u["username"], u["role"], u["state"]) for u in listed] == [("alice", "care", "active")]
    rt = build_runtime(Settings(database_url=database_url, keys_file=keys_file))
    try:
        assert people.sign_in(rt, "alice", PASSWORD)
        reset = _voms(
            database_url,
            keys_file,
            "user",
            "reset-password",
            "alice",
            "--password-stdin",
            stdin="another good password\n",
        )
        assert reset.returncode == 0, reset.stderr
        with pytest.raises(people.SignInRefused):
            people.sign_in(rt, "alice", PASSWORD)
        assert people.sign_in(rt, "alice", "another good password")
        assert _voms(database_url, keys_file, "user", "disable", "alice").returncode == 0
        with pytest.raises(people.SignInRefused):
            people.sign_in(rt, "alice", "another good password")
    finally:
        rt.engine.dispose()


def test_a_password_is_never_taken_from_the_command_line(
    database_url: str, keys_file: Path
) -> None:
    refused = _voms(
        database_url, keys_file, "user", "create", "--username", "bob", "--role", "care"
    )
    assert refused.returncode != 0
    assert "--password-stdin" in refused.stderr
    short = _voms(
        database_url,
        keys_file,
        "user",
        "create",
        "--username",
        "bob",
        "--role",
        "care",
        "--password-stdin",
        stdin="short\n",
    )
    assert short.returncode == 1
    assert "10 to 200 characters" in short.stderr


def test_a_distributor_is_scoped_to_a_reseller_from_the_command_line(
    database_url: str, keys_file: Path, rt: Runtime
) -> None:
    reseller_support.stocked_reseller(rt, "DIST")
    reseller_support.reseller(rt, "SHOP", parent="DIST")
    created = _voms(
        database_url,
        keys_file,
        "user",
        "create",
        "--username",
        "sam",
        "--role",
        "distributor",
        "--reseller",
        "SHOP",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    assert "reseller SHOP of ACME" in created.stdout
    [sam] = json.loads(_voms(database_url, keys_file, "user", "list").stdout)
    assert (sam["reseller"], sam["service_provider"]) == ("SHOP", "ACME")
    token = people.sign_in(rt, "sam", PASSWORD)
    session = people.session_of(rt, token)
    assert session is not None
    listed = accounts.list_resellers(rt, session.principal)
    assert [r["code"] for r in listed["items"]] == ["SHOP"]
    refused = _voms(
        database_url,
        keys_file,
        "user",
        "create",
        "--username",
        "cara",
        "--role",
        "care",
        "--reseller",
        "SHOP",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert refused.returncode == 1
    assert "only a distributor" in refused.stderr
