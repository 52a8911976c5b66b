"""What a process needs to serve: settings, the database engine, the keyring."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from voms.billing.builtin import BuiltinWallet
from voms.billing.engine import BillingEngine
from voms.caching import ReadCache
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
    # Called with the channel and the answer of every successful credit (redemption,
    # recharge, reservation commit) after the commit: the recipient's SMS notice, the
    # confirmation SMS; None: nothing to send. Set by voms.channels.sms.install_notices.
    after_recharge: Callable[[str, Mapping[str, Any]], object] | None = None
    # Sends one subscriber alert by SMS: (msisdn, kind, values); raises when it was not
    # accepted. Set by voms.channels.sms.install_notices (services/alerts sends through it).
    alert_sms: Callable[[str, str, Mapping[str, Any]], object] | None = None
    # Small per-process caches, keyed by the service that owns them.
    caches: dict[str, Any] = field(default_factory=dict)
    # The standby behind VOMS_READ_DATABASE_URL that serves reports, lookups and lists
    # (a unit of work with replica=True); None: the primary serves them.
    read_engine: Engine | None = None

    def read_cache(self, name: str, ttl: float) -> ReadCache[Any]:
        """The process's :class:`ReadCache` called ``name``, made on first use."""
        cache = self.caches.get(name)
        if cache is None:
            cache = self.caches.setdefault(name, ReadCache[Any](ttl))
        return cache  # type: ignore[no-any-return]


def build_runtime(settings: Settings) -> Runtime:
    """Open the database and load the keys named by ``settings``."""
    return Runtime(
        settings=settings,
        engine=make_engine(settings),
        keyring=load_keyring(settings.resolved_keys_file()),
        read_engine=make_engine(settings, read=True) if settings.read_database_url else None,
    )
