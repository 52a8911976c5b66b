"""Redemption: the one service every channel calls to consume a voucher.

Redeem, reserve → commit/revoke, and voucher-type recharges. Each call is one unit of
work (:mod:`voms.services.uow`); the conditional ``UPDATE vouchers … WHERE state =
'available' RETURNING`` decides the winner among concurrent attempts on one PIN. Every
attempt, successful or not, is recorded in ``transactions``.

The package, in the order a redemption runs through it:

- :mod:`.requests`: requests as received, and the parsing of their raw values;
- :mod:`.attempts`: the frame every call runs in (unit of work, record, idempotency,
  the recipient's notice after the commit);
- :mod:`.blacklist`: bad PINs and the temporary blacklist;
- :mod:`.vouchers`: finding the voucher of a PIN (where a failed lookup is noted) and
  taking it through the voucher transition table;
- :mod:`.charging`: for a provider whose balances live in an external charging system,
  the voucher reserved, the charging system called outside the transaction, the outcome
  recorded (or settled later by the ``charging_settlement`` job);
- :mod:`.accounts`: the recipient's account check, the scenario, and the credit through
  the billing engine;
- :mod:`.limits`: the recipient's recharge limits, counted by one upsert (5008);
- :mod:`.calls`: redeem, reserve and recharge, each readable top to bottom;
- :mod:`.reservations`: commit, revoke and the timeout action.

Checks, in order (the first that applies answers):
channel or request id malformed (4008) · request id replay, or reuse (5006) · msisdn,
recipient (4006) · service provider (4000) · blacklist (5003) · PIN missing (4007), length (4001),
check digit (2002) · PIN unknown (2004) · serial (2003) · voucher and batch state
(2009, 2010, 2013, 2011, 2001, 2012, 2014) · subscriber (5001, 5010 frozen, 5002; an
expired account within its grace period is revived: services/accounts_lifecycle.py) ·
product type (2007) · scenario (4005, 2008) · balance limit (5004) · recharge limit (5008)
· with an external charging system: its answer (5001, 3000; 5009 when it does not answer).
"""

from voms.services.redemption.calls import recharge, redeem, reserve
from voms.services.redemption.requests import (
    CHANNELS,
    RechargeRequest,
    RedemptionRequest,
    Response,
    SettlementRequest,
)
from voms.services.redemption.reservations import (
    HOUSEKEEPING,
    commit,
    expire_reservations,
    revoke,
)

__all__ = [
    "CHANNELS",
    "HOUSEKEEPING",
    "RechargeRequest",
    "RedemptionRequest",
    "Response",
    "SettlementRequest",
    "commit",
    "expire_reservations",
    "recharge",
    "redeem",
    "reserve",
    "revoke",
]
