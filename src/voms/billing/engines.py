"""The external engines of one process: one per service provider and configuration.

An engine holds a pool of connections and a circuit breaker, so it lives as long as its
provider's configuration does: a changed configuration builds a new one (the old one is
closed once it has been replaced), and every redemption thread of the process shares it.
"""

import threading
from collections.abc import Callable, Mapping
from typing import Any

from voms.billing.breaker import Breaker
from voms.billing.config import HttpBilling, UcipBilling, parse, resolve_secret
from voms.billing.external import ExternalEngine
from voms.billing.http import HttpEngine
from voms.billing.ucip import UcipEngine
from voms.config import Settings


class Engines:
    """``get`` gives a provider's engine for its stored configuration (None: builtin)."""

    def __init__(
        self, settings: Settings, key_file_secrets: Callable[[], Mapping[str, str]]
    ) -> None:
        self._settings = settings
        self._secrets = key_file_secrets  # (the key file may be read again meanwhile)
        self._lock = threading.Lock()
        self._engines: dict[int, tuple[str, ExternalEngine]] = {}

    def get(self, service_provider_id: int, code: str, stored: Any) -> ExternalEngine | None:
        """The engine of a provider whose billing is ``stored``; raises ``SecretMissing``
        when a secret it references is not set, ``ValueError`` when it is malformed."""
        if stored is None:  # (the built-in wallet is stored as null)
            return None
        key = repr(sorted(stored.items())) if isinstance(stored, dict) else repr(stored)
        known = self._engines.get(service_provider_id)
        if known is not None and known[0] == key:
            return known[1]
        with self._lock:
            known = self._engines.get(service_provider_id)
            if known is not None and known[0] == key:
                return known[1]
            engine = self.build(code, stored)
            if engine is None:
                return None
            self._engines[service_provider_id] = (key, engine)
            if known is not None:
                known[1].close()
        return engine

    def build(self, code: str, stored: Any) -> ExternalEngine | None:
        config = parse(stored)
        settings = self._settings
        in_flight = settings.charging_max_in_flight or max(1, settings.redemption_threads - 1)
        breaker = Breaker(
            settings.charging_breaker_failures, settings.charging_breaker_reset_s, in_flight
        )
        # One connection per call allowed in flight, and one for the settlement job.
        connections = in_flight + 1
        if isinstance(config, UcipBilling):
            password = resolve_secret(config.password, self._secrets()) if config.password else None
            return UcipEngine(code, config, password, breaker, connections)
        if isinstance(config, HttpBilling):
            secret = resolve_secret(config.secret, self._secrets())
            return HttpEngine(code, config, secret, breaker, connections)
        return None

    def close(self) -> None:
        with self._lock:
            for _, engine in self._engines.values():
                engine.close()
            self._engines.clear()
