"""Roles of API keys and users, and what each may do (docs/api.md "Authentication")."""

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    DISTRIBUTOR = "distributor"
    CARE = "care"
    CHANNEL = "channel"
    AUDITOR = "auditor"


class Permission(StrEnum):
    CATALOG_READ = "catalog:read"
    CATALOG_WRITE = "catalog:write"
    BATCH_READ = "batch:read"
    BATCH_WRITE = "batch:write"
    REDEEM = "redeem"
    LOOKUP = "lookup"
    SUBSCRIBER_WRITE = "subscriber:write"
    WALLET_ADJUST = "wallet:adjust"
    EXPORT = "export"
    AUDIT_READ = "audit:read"
    HOUSEKEEPING = "housekeeping"
    APIKEY_ADMIN = "apikey:admin"
    RESELLER_READ = "reseller:read"
    RESELLER_WRITE = "reseller:write"
    SELL = "sell"
    BLACKLIST = "blacklist"  # view, block by hand, release
    REVERSE = "transaction:reverse"
    REVERSE_FORCE = "transaction:reverse:force"  # take back a credit already spent
    REPORT_READ = "report:read"
    BILLING_ADMIN = "billing:admin"  # where a provider's balances live (admin only)
    # Credits a wallet with no voucher: admin keys, and keys given it by name
    # (`voms apikey create --allow voucher-type-recharge`), never a role by itself.
    VOUCHER_TYPE_RECHARGE = "voucher-type-recharge"
    EVENTS_ADMIN = "events:admin"  # webhooks, deliveries, replays: admins only
    PROMOTIONS = "promotions"  # create, change and read promotion plans


# Rights a key can be given beyond its role, by the names `--allow` takes.
GRANTABLE = frozenset({Permission.VOUCHER_TYPE_RECHARGE})


_READ = {Permission.CATALOG_READ, Permission.BATCH_READ, Permission.LOOKUP}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        _READ
        | {
            Permission.CATALOG_WRITE,
            Permission.BATCH_WRITE,
            Permission.SUBSCRIBER_WRITE,
            Permission.HOUSEKEEPING,
            Permission.REPORT_READ,
            Permission.PROMOTIONS,
        }
    ),
    Role.DISTRIBUTOR: frozenset(
        {
            Permission.CATALOG_READ,
            Permission.BATCH_READ,
            Permission.EXPORT,
            Permission.RESELLER_READ,
            Permission.RESELLER_WRITE,
            Permission.SELL,
        }
    ),
    Role.CARE: frozenset(
        {
            Permission.CATALOG_READ,
            Permission.LOOKUP,
            Permission.REDEEM,
            Permission.WALLET_ADJUST,
            Permission.BLACKLIST,
            Permission.REVERSE,
            Permission.REPORT_READ,
        }
    ),
    Role.CHANNEL: frozenset({Permission.REDEEM, Permission.CATALOG_READ}),
    Role.AUDITOR: frozenset(
        _READ | {Permission.AUDIT_READ, Permission.RESELLER_READ, Permission.REPORT_READ}
    ),
}


# What a distributor key scoped to one reseller may do: its subtree's calls, no exports.
RESELLER_KEY_PERMISSIONS = frozenset(
    {Permission.CATALOG_READ, Permission.RESELLER_READ, Permission.RESELLER_WRITE, Permission.SELL}
)


def allows(role: Role, permission: Permission) -> bool:
    """True when ``role`` carries ``permission``."""
    return permission in ROLE_PERMISSIONS[role]
