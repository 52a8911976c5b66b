"""What a process needs to serve: settings, the database engine, the keyring."""

from dataclasses import dataclass, field

from sqlalchemy import Engine

from voms.billing.builtin import BuiltinWallet
from voms.billing.engine import BillingEngine
from voms.config import Settings
from voms.crypto import Keyring, load_keyring
from voms.db.engine import make_engine


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    keyring: Keyring
    # Where wallets live: the built-in wallet unless an adapter is configured.
    billing: BillingEngine = field(default_factory=BuiltinWallet)
    # Small per-process caches, keyed by the service that owns them.
    caches: dict[str, object] = field(default_factory=dict)


def build_runtime(settings: Settings) -> Runtime:
    """Open the database and load the keys named by ``settings``."""
    return Runtime(
        settings=settings,
        engine=make_engine(settings),
        keyring=load_keyring(settings.resolved_keys_file()),
    )
