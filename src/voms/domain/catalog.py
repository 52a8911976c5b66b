"""The catalog as a redemption sees it: voucher types, their scenarios and credits.

Frozen values, loaded by the catalog service and cached per process; the redemption
reads them and never changes them.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

TimeoutAction = Literal["hold", "commit", "revoke"]
ScenarioSelection = Literal["prompt", "default"]


@dataclass(frozen=True)
class Credit:
    """One credit of a scenario (or an adjustment): amount in the type's minor unit."""

    balance_type_id: int
    balance_type: str
    amount: int
    balance_expiry_extension_days: int = 0
    max_balance: int | None = None  # the balance type's limit (5004 above it)

    def limited(self, max_balance: int | None) -> "Credit":
        """This credit with its balance type's limit (``dataclasses.replace`` costs five
        times as much, on every redemption)."""
        return Credit(
            self.balance_type_id,
            self.balance_type,
            self.amount,
            self.balance_expiry_extension_days,
            max_balance,
        )

    def public(self) -> dict[str, Any]:
        """As an API answer shows it."""
        return {
            "balance_type": self.balance_type,
            "amount": self.amount,
            "balance_expiry_extension_days": self.balance_expiry_extension_days,
        }


@dataclass(frozen=True)
class Scenario:
    """What a voucher of a type credits: one of its numbered offers."""

    number: int
    name: str
    default: bool
    credits: tuple[Credit, ...]
    account_expiry_extension_days: int = 0
    new_product_type_id: int | None = None
    new_product_type: str | None = None
    # A campaign scenario: offered from valid_from until valid_until, to these product
    # types only (empty: every product type).
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    product_type_ids: frozenset[int] = frozenset()

    def runs_at(self, at: datetime) -> bool:
        """The scenario is offered at ``at`` (its window is ``[valid_from, valid_until)``)."""
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_until is None or at < self.valid_until
        )

    def offered_to(self, product_type_id: int) -> bool:
        return not self.product_type_ids or product_type_id in self.product_type_ids

    def public(self) -> dict[str, Any]:
        """As an API answer shows it (a 2008 lists the choices this way)."""
        return {
            "number": self.number,
            "name": self.name,
            "default": self.default,
            "credits": [credit.public() for credit in self.credits],
            "account_expiry_extension_days": self.account_expiry_extension_days,
            "new_product_type": self.new_product_type,
        }


@dataclass(frozen=True)
class VoucherType:
    """A voucher type with what a redemption needs of it."""

    id: int
    code: str
    service_provider_id: int
    pin_length: int
    reservation_timeout_s: int
    timeout_action: TimeoutAction
    allowed_product_type_ids: frozenset[int]  # empty: every product type
    scenarios: tuple[Scenario, ...]
    # 'default': a redemption without a scenario gets the default one instead of 2008.
    scenario_selection: ScenarioSelection = "prompt"

    def allows_product_type(self, product_type_id: int) -> bool:
        return not self.allowed_product_type_ids or product_type_id in self.allowed_product_type_ids
