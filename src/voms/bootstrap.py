"""First start: keys, schema and a first admin key, so one command runs the service."""

import logging
import os
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from voms.config import Settings
from voms.crypto import Keyring, KeyringError, write_keyring
from voms.db.engine import make_engine
from voms.db.migrate import is_up_to_date, upgrade
from voms.domain.errors import Conflict
from voms.runtime import Runtime, build_runtime
from voms.services import auth

log = logging.getLogger("voms.bootstrap")


class StartupError(Exception):
    """The service cannot start; the message says how to fix it."""


@dataclass
class Prepared:
    runtime: Runtime
    created_keys_file: bool
    first_admin_key: str | None


def create_private_database_file(settings: Settings) -> None:
    """Create a new SQLite database file readable by its owner only (0600): it holds the
    installation's vouchers and wallets. SQLite gives its -wal and -shm files the same
    mode."""
    path = settings.sqlite_path()
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def prepare(settings: Settings) -> Prepared:
    """Make the installation ready to serve, or explain exactly what is missing.

    Embedded default (SQLite): create the key file and apply migrations on first run.
    PostgreSQL: never invent keys (new keys would orphan every stored PIN) and never
    migrate implicitly; say which command to run instead.
    """
    keys_file = settings.resolved_keys_file()
    created = False
    if not keys_file.exists():
        if not settings.is_sqlite:
            raise StartupError(
                f"key file {keys_file} not found. A server on PostgreSQL never creates keys "
                "by itself: new keys would make every stored PIN unreadable. For a new "
                f"installation run `voms keys init --keys-file {keys_file}` once and give "
                "every server the same file (VOMS_KEYS_FILE), or point VOMS_KEYS_FILE at the "
                "existing one."
            )
        write_keyring(keys_file, Keyring.new())
        created = True
        log.info("created key file %s", keys_file)
    create_private_database_file(settings)
    engine = make_engine(settings)
    try:
        if settings.is_sqlite:
            upgrade(engine)
        elif not is_up_to_date(engine):
            raise StartupError("the database schema is not current: run `voms db upgrade` first")
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise StartupError(f"cannot reach the database: {reason}") from None
    finally:
        engine.dispose()
    try:
        rt = build_runtime(settings)
    except KeyringError as exc:
        raise StartupError(str(exc)) from None
    admin_key = None
    if not auth.has_any_api_key(rt):
        try:
            _, admin_key = auth.create_api_key(rt, auth.CONSOLE, name="admin", role="admin")
        except Conflict:  # another process started at the same moment and made it
            admin_key = None
    return Prepared(runtime=rt, created_keys_file=created, first_admin_key=admin_key)
