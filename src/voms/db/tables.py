"""The schema (SQLAlchemy Core). Migrations in ``migrations/`` must match it.

Conventions: integer ids, integer money in minor units, UTC datetimes, named
constraints, CHECK constraints as a backstop for rules the services enforce.
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from voms.db.types import BigId, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _created_at() -> Column[object]:
    return Column("created_at", UTCDateTime(), nullable=False)


# --- catalog ---------------------------------------------------------------------

service_providers = Table(
    "service_providers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(32), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    _created_at(),
    # {"max_per_day", "max_per_month", "max_value_per_day": {balance type code: amount}}
    # per recipient MSISDN (0006; services/recharge_limits.py); None: no limit.
    Column("recharge_limits", JSON),
    # Where the provider's balances live (0006): null is the built-in wallet, else
    # {"engine": "ucip"|"http", "url", …}; secrets only as references (env:, keys:).
    Column("billing", JSON),
)

balance_types = Table(
    "balance_types",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_provider_id", ForeignKey("service_providers.id"), nullable=False),
    Column("code", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    Column("unit", String(32), nullable=False),
    Column("currency", String(3)),
    Column("max_balance", BigInteger),
    _created_at(),
    # The balance at an external charging system (0006): "main" or a dedicated account.
    Column("external_id", String(32)),
    UniqueConstraint("service_provider_id", "code", name="uq_balance_types_sp_code"),
    CheckConstraint("max_balance IS NULL OR max_balance > 0", name="max_balance_positive"),
)

product_types = Table(
    "product_types",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_provider_id", ForeignKey("service_providers.id"), nullable=False),
    Column("code", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    _created_at(),
    UniqueConstraint("service_provider_id", "code", name="uq_product_types_sp_code"),
)

# Voucher type codes are unique in the installation: the API names them without a
# service provider (batches, voucher-type recharges, scenario lookups).
voucher_types = Table(
    "voucher_types",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_provider_id", ForeignKey("service_providers.id"), nullable=False),
    Column("code", String(32), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("pin_length", SmallInteger, nullable=False),
    Column("validity_days", Integer, nullable=False),
    Column("reservation_timeout_s", Integer, nullable=False),
    Column("timeout_action", String(8), nullable=False),
    _created_at(),
    # 'prompt': a redemption without a scenario answers 2008 with the choices; 'default':
    # it gets the default scenario (0006).
    Column("scenario_selection", String(8), nullable=False, server_default="prompt"),
    CheckConstraint("pin_length BETWEEN 8 AND 24", name="pin_length_range"),
    CheckConstraint("validity_days > 0", name="validity_positive"),
    CheckConstraint("reservation_timeout_s > 0", name="timeout_positive"),
    CheckConstraint("timeout_action IN ('hold', 'commit', 'revoke')", name="timeout_action"),
)

voucher_type_product_types = Table(
    "voucher_type_product_types",
    metadata,
    Column("voucher_type_id", ForeignKey("voucher_types.id", ondelete="CASCADE"), primary_key=True),
    Column("product_type_id", ForeignKey("product_types.id"), primary_key=True),
)

scenarios = Table(
    "scenarios",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("voucher_type_id", ForeignKey("voucher_types.id", ondelete="CASCADE"), nullable=False),
    Column("number", SmallInteger, nullable=False),
    Column("name", String(200), nullable=False),
    Column("is_default", Boolean, nullable=False),
    Column("account_expiry_extension_days", Integer, nullable=False),
    Column("new_product_type_id", ForeignKey("product_types.id")),
    # A campaign scenario is offered only from valid_from until valid_until (0006_promo).
    Column("valid_from", UTCDateTime()),
    Column("valid_until", UTCDateTime()),
    UniqueConstraint("voucher_type_id", "number", name="uq_scenarios_vt_number"),
    CheckConstraint("number > 0", name="number_positive"),
    CheckConstraint("account_expiry_extension_days >= 0", name="extension_not_negative"),
)

scenario_credits = Table(
    "scenario_credits",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scenario_id", ForeignKey("scenarios.id", ondelete="CASCADE"), nullable=False),
    Column("balance_type_id", ForeignKey("balance_types.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_expiry_extension_days", Integer, nullable=False),
    UniqueConstraint("scenario_id", "balance_type_id", name="uq_scenario_credits_scenario_bt"),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("balance_expiry_extension_days >= 0", name="extension_not_negative"),
)

# The product types a scenario is offered to (none: every product type) (0006_promo).
scenario_product_types = Table(
    "scenario_product_types",
    metadata,
    Column("scenario_id", ForeignKey("scenarios.id", ondelete="CASCADE"), primary_key=True),
    Column("product_type_id", ForeignKey("product_types.id"), primary_key=True),
)

# --- access and audit ------------------------------------------------------------

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("role", String(16), nullable=False),
    Column("service_provider_id", ForeignKey("service_providers.id")),
    # Rights beyond the role, comma-separated (voms.domain.roles.GRANTABLE).
    Column("allow", String(200)),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    Column("revoked_at", UTCDateTime()),
    # A distributor key of one reseller sees that reseller's subtree only (migration
    # 0005). No foreign key: SQLite cannot add one to an existing table in place.
    Column("reseller_id", Integer),
)

# Append-only: triggers created by the migration refuse UPDATE and DELETE.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(64), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_id", String(64), nullable=False),
    Column("service_provider_id", Integer),
    Column("detail", JSON, nullable=False),
    Index("ix_audit_log_object", "object_type", "object_id"),
    Index("ix_audit_log_at", "at"),
)

# --- vouchers --------------------------------------------------------------------

# One row per counter; allocation is a conditional UPDATE … RETURNING, which behaves
# the same on SQLite, PostgreSQL and distributed PostgreSQL (no sequence semantics).
counters = Table(
    "counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("next_value", BigInteger, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_provider_id", ForeignKey("service_providers.id"), nullable=False),
    Column("voucher_type_id", ForeignKey("voucher_types.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("generated_count", BigInteger, nullable=False, server_default=text("0")),
    Column("serial_first", BigInteger, nullable=False),
    Column("serial_last", BigInteger, nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("error", Text),
    Column("request_id", String(100)),
    # A part split off this batch by a range operation (activation, expiry): 0005.
    Column("parent_batch_id", Integer),
    CheckConstraint("count > 0", name="count_positive"),
    # Generated batches fill their range; imported legacy batches may have gaps (0002).
    CheckConstraint("count <= serial_last - serial_first + 1", name="serial_range"),
    CheckConstraint(
        "state IN ('generating', 'generated', 'active', 'frozen', 'deleted', 'failed')",
        name="state",
    ),
    Index("ix_batches_state", "state"),
    Index("ix_batches_voucher_type", "voucher_type_id"),
    Index("ix_batches_serial_first", "serial_first"),
    Index("ix_batches_parent_batch_id", "parent_batch_id"),
)

# Hot table (100 million rows): the serial is the key, so ranges are index scans.
vouchers = Table(
    "vouchers",
    metadata,
    Column("serial", BigInteger, primary_key=True, autoincrement=False),
    # No foreign key (migration 0007_vouchers_fk): its per-row check was most of the cost
    # of loading generated vouchers. Nothing deletes a batch row; `voms verify` reports
    # vouchers whose batch does not exist.
    Column("batch_id", Integer, nullable=False),
    Column("pin_hash", LargeBinary(32), nullable=False, unique=True),
    Column("lookup_key_id", SmallInteger, nullable=False),
    Column("pin_ciphertext", LargeBinary, nullable=False),
    Column("encryption_key_id", SmallInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("state_changed_at", UTCDateTime()),
    Column("redeemed_at", UTCDateTime()),
    Column("redeemed_by", String(15)),
    # Written with OR, not IN (…): SQLite builds the IN list anew for every inserted row,
    # which made bulk generation a quarter slower.
    CheckConstraint(
        "state = 'available' OR state = 'reserved' OR state = 'redeemed' "
        "OR state = 'frozen' OR state = 'deleted'",
        name="state",
    ),
    Index("ix_vouchers_batch_id", "batch_id"),
    # Room on each page for a voucher's next state: HOT updates (migration 0006_scale).
    postgresql_with={"fillfactor": 85},
)

# History of batch and range operations: one row per operation, not per voucher.
voucher_events = Table(
    "voucher_events",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(32), nullable=False),
    Column("batch_id", Integer),
    Column("serial_from", BigInteger),
    Column("serial_to", BigInteger),
    Column("affected", BigInteger, nullable=False),
    Column("reason", String(200)),
    Column("detail", JSON, nullable=False),
    Index("ix_voucher_events_batch", "batch_id"),
    Index("ix_voucher_events_serials", "serial_from", "serial_to"),
)

# --- wallet ----------------------------------------------------------------------

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("msisdn", String(15), nullable=False, unique=True),
    Column("service_provider_id", ForeignKey("service_providers.id"), nullable=False),
    Column("product_type_id", ForeignKey("product_types.id"), nullable=False),
    Column("state", String(12), nullable=False),
    Column("account_expires_at", UTCDateTime()),
    Column("language", String(16)),  # what the channels speak to them; None: the default
    _created_at(),
    # 'expired' (0006): the account expiry has passed; a redemption within the grace
    # period revives it, the account_lifecycle job deactivates it after.
    CheckConstraint(
        "state IN ('active', 'expired', 'frozen', 'suspended', 'deactivated')", name="state"
    ),
)

balances = Table(
    "balances",
    metadata,
    Column("subscriber_id", ForeignKey("subscribers.id"), primary_key=True),
    Column("balance_type_id", ForeignKey("balance_types.id"), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("expires_at", UTCDateTime()),
    CheckConstraint("amount >= 0", name="amount_not_negative"),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("subscriber_id", ForeignKey("subscribers.id"), nullable=False),
    Column("balance_type_id", ForeignKey("balance_types.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("cause", String(16), nullable=False),
    Column("transaction_id", String(36)),
    Column("serial", BigInteger),
    Column("reason", String(200)),
    Column("actor", String(100), nullable=False),
    # The reversal that took this credit back (0005): it leaves the backstop below.
    Column("reversed_by", String(36)),
    CheckConstraint(
        "cause IN ('redemption', 'recharge', 'reward', 'adjustment', 'expiry', 'reversal')",
        name="cause",
    ),
    CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
    Index("ix_ledger_subscriber", "subscriber_id", "balance_type_id"),
    Index("ix_ledger_transaction", "transaction_id"),
    # One redemption credit per voucher and balance type: the double-spend backstop. A
    # reversed credit no longer counts, so a voucher made active again can be redeemed.
    Index(
        "uq_ledger_redemption",
        "serial",
        "balance_type_id",
        unique=True,
        postgresql_where=text("cause = 'redemption' AND reversed_by IS NULL"),
        sqlite_where=text("cause = 'redemption' AND reversed_by IS NULL"),
    ),
)

# Every redemption-family attempt, successful or not.
transactions = Table(
    "transactions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("msisdn", String(15)),
    Column("recipient_msisdn", String(15)),
    Column("serial", BigInteger),
    Column("voucher_type_id", Integer),
    Column("scenario", SmallInteger),
    Column("result_code", Integer, nullable=False),
    Column("credits", JSON, nullable=False),
    Column("reservation_id", String(36)),
    Column("service_provider_id", Integer),
    Column("api_key_id", Integer),
    Column("actor", String(100), nullable=False),
    # The reversal of this transaction, when it was reversed (0005).
    Column("reversed_by", String(36)),
    # Keyset paging (newest first, id breaks ties) is one index range scan per filter.
    Index("ix_transactions_msisdn_at", "msisdn", "at", "id"),
    Index("ix_transactions_recipient_at", "recipient_msisdn", "at", "id"),
    Index("ix_transactions_serial_at", "serial", "at", "id"),
    Index("ix_transactions_at", "at", "id"),
    # Exactly one successful redemption (or commit) per voucher, reversed ones aside.
    Index(
        "uq_transactions_one_success_per_voucher",
        "serial",
        unique=True,
        postgresql_where=text(
            "result_code = 0 AND kind IN ('redemption', 'commit') AND reversed_by IS NULL"
        ),
        sqlite_where=text(
            "result_code = 0 AND kind IN ('redemption', 'commit') AND reversed_by IS NULL"
        ),
    ),
)

# The reversal of a successful redemption or recharge: one per transaction (the key),
# who and why, and the answer given, which a repeated reversal gets again (0005).
reversals = Table(
    "reversals",
    metadata,
    Column("transaction_id", String(36), primary_key=True),
    Column("reversal_id", String(36), nullable=False, unique=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("reason", String(200), nullable=False),
    Column("voucher_reactivated", Boolean, nullable=False),
    Column("forced", Boolean, nullable=False),
    Column("service_provider_id", Integer),
    Column("answer", JSON, nullable=False),
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("serial", BigInteger, nullable=False),
    Column("voucher_type_id", Integer, nullable=False),
    Column("channel", String(8), nullable=False),
    Column("msisdn", String(15), nullable=False),
    Column("recipient_msisdn", String(15), nullable=False),
    Column("scenario", SmallInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("credits", JSON, nullable=False),
    _created_at(),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("api_key_id", Integer),
    CheckConstraint("state IN ('open', 'committed', 'revoked', 'held')", name="state"),
    Index("ix_reservations_open_expiry", "state", "expires_at"),
    Index("ix_reservations_serial", "serial"),
)

# A credit asked of an external charging system (0006), one per redemption attempt that
# reached one: its id is the originTransactionID, sent again on every retry. The voucher
# stays reserved while the charge is pending or unknown; the charging_settlement job
# retries those until the charging system answers definitely.
charges = Table(
    "charges",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("transaction_id", String(36), nullable=False),
    Column("serial", BigInteger, nullable=False),
    Column("service_provider_id", Integer, nullable=False),
    Column("engine", String(8), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("msisdn", String(15), nullable=False),
    Column("recipient_msisdn", String(15), nullable=False),
    Column("voucher_type_id", Integer, nullable=False),
    Column("scenario", SmallInteger, nullable=False),
    Column("refill", JSON, nullable=False),
    Column("state", String(10), nullable=False),
    Column("result_code", Integer),
    Column("tries", Integer, nullable=False),
    Column("next_try_at", UTCDateTime(), nullable=False),
    Column("last_error", String(200)),
    Column("settled_transaction_id", String(36)),
    Column("actor", String(100), nullable=False),
    Column("api_key_id", Integer),
    _created_at(),
    Column("settled_at", UTCDateTime()),
    CheckConstraint("state IN ('pending', 'unknown', 'credited', 'refused')", name="state"),
    Index("ix_charges_due", "state", "next_try_at"),
    Index("ix_charges_serial", "serial"),
    Index("ix_charges_recipient", "recipient_msisdn", "state"),
)

pin_attempts = Table(
    "pin_attempts",
    metadata,
    Column("msisdn", String(15), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("blacklisted_until", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    # A block by hand (0005): until when it was set (far in the future: until released),
    # why and by whom. The redemption reads blacklisted_until only; while it still equals
    # manual_until, the block is the manual one.
    Column("manual_until", UTCDateTime()),
    Column("note", String(200)),
    Column("blocked_by", String(100)),
)

# Recharges per recipient MSISDN and UTC period ('D20261206', 'M202612'): the count
# (balance_type_id 0) or, per balance type, the value credited; written by one upsert
# in the redemption's transaction when its provider has limits (0006).
recharge_counters = Table(
    "recharge_counters",
    metadata,
    Column("msisdn", String(15), primary_key=True),
    Column("period", String(9), primary_key=True),
    Column("balance_type_id", Integer, primary_key=True, autoincrement=False),
    Column("count", BigInteger, nullable=False),
    Column("value", BigInteger, nullable=False),
    Index("ix_recharge_counters_period", "period"),
)

# Failed voucher lookups per subject (an API key, a service provider, a client address)
# and minute: the sliding window of the guessing budget, shared by every process.
lookup_failures = Table(
    "lookup_failures",
    metadata,
    Column("subject", String(120), primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("failures", Integer, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(40), primary_key=True),
    Column("request_id", String(100), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", SmallInteger, nullable=False),
    Column("response", JSON, nullable=False),
    _created_at(),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

# --- distribution: partners and encrypted exports (migration 0002) ------------------

# A print shop, distributor or retailer that receives voucher files encrypted to its
# OpenPGP key. service_provider_id NULL: the partner may receive any provider's vouchers.
partners = Table(
    "partners",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("contact", String(200)),
    Column("service_provider_id", ForeignKey("service_providers.id")),
    Column("public_key", Text, nullable=False),
    Column("key_fingerprint", String(64), nullable=False),
    Column("key_user_ids", JSON, nullable=False),
    Column("key_expires_at", UTCDateTime()),
    Column("state", String(10), nullable=False),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    Column("disabled_at", UTCDateTime()),
    CheckConstraint("state IN ('active', 'disabled')", name="state"),
)

# One row per encrypted file handed out: who, when, to whom, what (filters), how many,
# and the SHA-256 of the encrypted file. The vouchers keep partner_id and export_id.
exports = Table(
    "exports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_provider_id", ForeignKey("service_providers.id"), nullable=False),
    Column("partner_id", ForeignKey("partners.id"), nullable=False),
    Column("format", String(4), nullable=False),
    Column("filters", JSON, nullable=False),
    Column("reissue", Boolean, nullable=False),
    Column("voucher_count", BigInteger, nullable=False),
    Column("reissued_count", BigInteger, nullable=False),
    Column("serial_first", BigInteger),
    Column("serial_last", BigInteger),
    Column("key_fingerprint", String(64), nullable=False),
    Column("file_name", String(100), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    # Set when the encrypted file is kept for download (API); NULL when it was written
    # straight to the caller (CLI). Only the token's hash is stored.
    Column("download_token_hash", String(64)),
    Column("download_expires_at", UTCDateTime()),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    # An export claims its vouchers a chunk per transaction (migration 0005): exporting
    # while it runs (exported_count claimed so far, updated_at its last step), then
    # exported, or failed with its marks undone and the reason in error.
    Column("state", String(10), nullable=False),
    Column("exported_count", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("error", Text),
    CheckConstraint("state IN ('exporting', 'exported', 'failed')", name="state"),
    CheckConstraint("format IN ('csv', 'xlsx')", name="format"),
    CheckConstraint("voucher_count > 0", name="voucher_count_positive"),
    CheckConstraint("reissued_count BETWEEN 0 AND voucher_count", name="reissued_count_range"),
    Index("ix_exports_partner", "partner_id"),
    Index("ix_exports_created_at", "created_at"),
)

# Which partner and export each exported voucher went to (the latest, after a reissue).
# Kept apart from vouchers, which migration 0002 relieved of these two columns: marking a
# million vouchers would otherwise write a new version of each voucher row and new
# entries in all its indexes (the 32-byte UNIQUE lookup hash that every redemption
# probes, too). No foreign keys (a million checks per export, for ids this module writes
# from rows it has just read) and no index on export_id (an export's serial range, in
# exports, finds its vouchers through the primary key).
voucher_exports = Table(
    "voucher_exports",
    metadata,
    Column("serial", BigId, primary_key=True, autoincrement=False),
    Column("export_id", Integer, nullable=False),
    Column("partner_id", Integer, nullable=False),
)

# The marks a running reissue replaced (the vouchers' earlier export and partner): put
# back if the reissue fails, dropped once it is exported. The primary key also keeps two
# running reissues from taking the same voucher.
export_displaced_marks = Table(
    "export_displaced_marks",
    metadata,
    Column("serial", BigId, primary_key=True, autoincrement=False),
    Column("export_id", Integer, nullable=False),
    Column("previous_export_id", Integer, nullable=False),
    Column("previous_partner_id", Integer, nullable=False),
)

# The encrypted file of an export, kept in the database so any server behind the load
# balancer can serve its download link; deleted once the link has expired.
export_file_chunks = Table(
    "export_file_chunks",
    metadata,
    Column("export_id", ForeignKey("exports.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)

# --- housekeeping: job runs, leases, cursors, archive, expiry counts (migration 0003) --

# Every run of a housekeeping job: when, by whom (scheduler, CLI, API), what it did.
job_runs = Table(
    "job_runs",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("job", String(40), nullable=False),
    Column("trigger", String(10), nullable=False),
    Column("runner", String(100), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("outcome", String(10), nullable=False),
    Column("rows_affected", BigInteger, nullable=False),
    Column("detail", JSON, nullable=False),
    Column("error", Text),
    CheckConstraint("outcome IN ('running', 'succeeded', 'failed', 'abandoned')", name="outcome"),
    CheckConstraint("trigger IN ('schedule', 'cli', 'api')", name="trigger"),
    Index("ix_job_runs_job_started", "job", "started_at"),
    Index("ix_job_runs_started", "started_at"),
)

# One row per job: who may run it now (a lease that expires unless renewed, so a
# crashed runner frees the job), and the last scheduled slot started anywhere, so
# several `voms serve` processes or hosts run each slot once. A row with an expiry,
# not an advisory lock: it works the same on SQLite, PostgreSQL and distributed SQL.
job_leases = Table(
    "job_leases",
    metadata,
    Column("job", String(40), primary_key=True),
    Column("holder", String(100)),
    Column("run_id", BigInteger),
    Column("expires_at", UTCDateTime()),
    Column("last_slot", UTCDateTime()),
)

# Where a resumable job stands (e.g. key re-encryption: the last serial done).
job_cursors = Table(
    "job_cursors",
    metadata,
    Column("job", String(40), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("detail", JSON, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Redeemed, expired and deleted vouchers past retention, moved out of the hot table.
# No PIN ciphertext (nothing may export them), but the lookup hash stays, UNIQUE, so
# generation never issues an archived PIN again and care still finds it by PIN.
voucher_archive = Table(
    "voucher_archive",
    metadata,
    Column("serial", BigInteger, primary_key=True, autoincrement=False),
    Column("batch_id", Integer, nullable=False),
    Column("pin_hash", LargeBinary(32), nullable=False, unique=True),
    Column("lookup_key_id", SmallInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("voucher_state", String(10), nullable=False),
    Column("state_changed_at", UTCDateTime()),
    Column("redeemed_at", UTCDateTime()),
    Column("redeemed_by", String(15)),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("archived_at", UTCDateTime(), nullable=False),
    CheckConstraint("state IN ('redeemed', 'expired', 'deleted')", name="state"),
    Index("ix_voucher_archive_batch_id", "batch_id"),
)

# Expiry made visible to reporting: per expired batch, how many of its vouchers
# expired unused. Vouchers are expired from expires_at whether or not this is counted.
batch_expiries = Table(
    "batch_expiries",
    metadata,
    Column("batch_id", Integer, primary_key=True, autoincrement=False),
    Column("service_provider_id", Integer, nullable=False),
    Column("voucher_type_id", Integer, nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("expired_count", BigInteger, nullable=False),
    Column("counted_at", UTCDateTime(), nullable=False),
    Index("ix_batch_expiries_voucher_type", "voucher_type_id", "expires_at"),
)

# --- channels: USSD sessions (migration 0004) ------------------------------------------
# Where a USSD session stands in its menu, so that any `voms serve` process can take the
# next step. It never holds a PIN: the gateway sends every input again with each step,
# and the session keeps only how many inputs it has used and which one was the PIN.
channel_sessions = Table(
    "channel_sessions",
    metadata,
    Column("channel", String(10), primary_key=True),
    Column("session_id", String(100), primary_key=True),
    Column("msisdn", String(15), nullable=False),
    Column("state", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    _created_at(),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_channel_sessions_expires_at", "expires_at"),
)

# --- resellers, their stock and electronic PIN sales (migration 0005) ------------------

# A distributor or shop. Resellers form a tree (parent_id); ``path`` lists the ids from
# the root down ("/3/17/"), so a subtree is one prefix match. ``due`` is what the
# reseller owes (negative: prepaid money left); a sale is refused when it would take
# ``due`` above ``credit_limit``. Commission in basis points of the face value.
resellers = Table(
    "resellers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(32), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("service_provider_id", ForeignKey("service_providers.id"), nullable=False),
    Column("parent_id", ForeignKey("resellers.id")),
    Column("path", String(400), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("credit_limit", BigInteger, nullable=False),
    Column("commission_bp", Integer, nullable=False),
    Column("due", BigInteger, nullable=False),
    Column("contact", String(200)),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    CheckConstraint("credit_limit >= 0", name="credit_limit_not_negative"),
    CheckConstraint("commission_bp BETWEEN 0 AND 10000", name="commission_range"),
    Index("ix_resellers_parent", "parent_id"),
)

# A serial range of one batch held by a reseller. Serials below ``next_serial`` are
# taken (sold as electronic PINs, activated, or passed over as not sellable): a sale
# advances the cursor instead of searching the batch. ``kind``: 'electronic' when no
# voucher of the range had been exported (its PINs never left the system), 'printed'
# otherwise (cards, activated by range, never sold as electronic PINs).
reseller_stock = Table(
    "reseller_stock",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("reseller_id", ForeignKey("resellers.id"), nullable=False),
    Column("voucher_type_id", ForeignKey("voucher_types.id"), nullable=False),
    Column("batch_id", ForeignKey("batches.id"), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("serial_from", BigInteger, nullable=False),
    Column("serial_to", BigInteger, nullable=False),
    Column("next_serial", BigInteger, nullable=False),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    CheckConstraint("kind IN ('electronic', 'printed')", name="kind"),
    CheckConstraint("serial_from <= serial_to", name="serial_range"),
    CheckConstraint(
        "next_serial BETWEEN serial_from AND serial_to + 1", name="next_serial_in_range"
    ),
    Index("ix_reseller_stock_holder", "reseller_id", "voucher_type_id"),
    Index("ix_reseller_stock_serials", "serial_from", "serial_to"),
)

# One row per sale: electronic PINs ('epin') or a range of cards activated ('activation').
sales = Table(
    "sales",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("reseller_id", ForeignKey("resellers.id"), nullable=False),
    Column("voucher_type_id", ForeignKey("voucher_types.id"), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    Column("value", BigInteger, nullable=False),
    Column("commission", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("serial_from", BigInteger),
    Column("serial_to", BigInteger),
    Column("deliver_to_msisdn", String(15)),
    Column("request_id", String(100)),
    Column("api_key_id", Integer),
    Column("actor", String(100), nullable=False),
    CheckConstraint("kind IN ('epin', 'activation')", name="kind"),
    CheckConstraint("count >= 0", name="count_not_negative"),
    Index("ix_sales_reseller_at", "reseller_id", "at", "id"),
)

# The vouchers of each electronic sale: the primary key is the backstop that no voucher
# (and so no PIN) is ever sold twice. PINs are decrypted again from the vouchers' own
# ciphertexts when a sale is answered a second time; none is stored here.
sale_vouchers = Table(
    "sale_vouchers",
    metadata,
    Column("serial", BigInteger, primary_key=True, autoincrement=False),
    Column("sale_id", String(36), nullable=False),
    Index("ix_sale_vouchers_sale", "sale_id"),
)

# A reseller's account: sales at face value, commissions, payments; ``due_after`` is the
# reseller's ``due`` after the entry, so a statement's opening balance is one row.
reseller_entries = Table(
    "reseller_entries",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("reseller_id", ForeignKey("resellers.id"), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("due_after", BigInteger, nullable=False),
    Column("sale_id", String(36)),
    Column("reference", String(200)),
    Column("actor", String(100), nullable=False),
    CheckConstraint("kind IN ('sale', 'commission', 'payment')", name="kind"),
    CheckConstraint("amount >= 0", name="amount_not_negative"),
    Index("ix_reseller_entries_reseller_at", "reseller_id", "at", "id"),
)


# --- reports: rollups and voucher-state counts (migration 0005) ----------------------------
# Reports read these, never ``transactions`` or ``vouchers``. The report_rollups job
# folds new transactions into them (watermark in job_cursors); see services/reports/.


def _rollup(name: str, bucket: str) -> Table:
    """Redemption-family attempts counted per bucket (hour or day), provider, voucher
    type, channel, kind, result and partner; 0 stands for "none" in the id columns (a
    failed attempt may know no voucher), so the key has no NULL and upserts can add."""
    return Table(
        name,
        metadata,
        Column(bucket, UTCDateTime(), primary_key=True),
        Column("service_provider_id", Integer, primary_key=True, autoincrement=False),
        Column("voucher_type_id", Integer, primary_key=True, autoincrement=False),
        Column("channel", String(8), primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("result_code", Integer, primary_key=True, autoincrement=False),
        Column("partner_id", Integer, primary_key=True, autoincrement=False),
        # "" when the voucher's scenario credits no balance type with a currency.
        Column("currency", String(3), primary_key=True),
        Column("count", BigInteger, nullable=False),
        Column("value", BigInteger, nullable=False),
    )


report_hourly = _rollup("report_hourly", "hour")
report_daily = _rollup("report_daily", "day")

# All-time totals per provider, channel, kind and result (Prometheus counters read them).
report_totals = Table(
    "report_totals",
    metadata,
    Column("service_provider_id", Integer, primary_key=True, autoincrement=False),
    Column("channel", String(8), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("result_code", Integer, primary_key=True, autoincrement=False),
    Column("count", BigInteger, nullable=False),
)

# Per batch and voucher state, the net number of the batch's vouchers that moved into
# (positive) or out of (negative) that state since they were written as available; a
# batch's count in a state is this plus, for "available", batches.generated_count.
# Written by serial-range operations (lifecycle) in their transaction and by the
# report_rollups job for redemptions, reservations, commits and revokes.
voucher_state_moves = Table(
    "voucher_state_moves",
    metadata,
    Column("batch_id", Integer, primary_key=True, autoincrement=False),
    Column("state", String(10), primary_key=True),
    Column("net", BigInteger, nullable=False),
)


# --- console: people and their sessions (migration 0005) -------------------------------
# People who sign in to the web console, with the roles and provider scope of API keys.
# Passwords are Argon2id hashes; the TOTP secret (second factor) is kept encrypted under
# the keyring's encryption key, never in clear.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("service_provider_id", ForeignKey("service_providers.id")),
    # A person of one reseller (a distributor): sees that reseller's subtree only.
    Column("reseller_id", Integer),
    Column("state", String(10), nullable=False),
    Column("totp_secret", LargeBinary),
    Column("totp_key_id", SmallInteger),
    Column("failed_sign_ins", Integer, nullable=False, server_default=text("0")),
    Column("locked_until", UTCDateTime()),
    Column("last_sign_in_at", UTCDateTime()),
    Column("password_changed_at", UTCDateTime(), nullable=False),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    CheckConstraint("state IN ('active', 'disabled')", name="state"),
)

# Server-side console sessions: the cookie holds a random token, the row its SHA-256.
# A session ends when unused for the idle timeout or at its absolute expiry.
ui_sessions = Table(
    "ui_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("second_factor_due", Boolean, nullable=False),
    _created_at(),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_ui_sessions_user", "user_id"),
    Index("ix_ui_sessions_expires_at", "expires_at"),
)


# --- alerts (migration 0006_alerts) -----------------------------------------------------
# What each service provider wants to be alerted of (services/alerts): quiet hours for
# subscriber SMS, days of notice before expiries, the blacklisting burst, who gets e-mail.
alert_settings = Table(
    "alert_settings",
    metadata,
    Column("service_provider_id", ForeignKey("service_providers.id"), primary_key=True),
    Column("quiet_from", String(5)),  # "21:00": subscriber alerts wait from then …
    Column("quiet_until", String(5)),  # … until "08:00" (local time of time_zone)
    Column("time_zone", String(64), nullable=False, server_default=text("'UTC'")),
    Column("expiry_notice_days", Integer),  # balance or account expiring; None: off
    Column("batch_expiry_days", Integer),  # batches about to expire; None: off
    Column("burst_count", Integer),  # this many blacklistings …
    Column("burst_minutes", Integer),  # … within this many minutes; None: off
    Column("reward_sms", Boolean, nullable=False, server_default=text("true")),
    Column("operator_emails", JSON, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("updated_by", String(100), nullable=False),
)

# Subscribers are alerted when a balance of the type falls below the threshold.
low_balance_thresholds = Table(
    "low_balance_thresholds",
    metadata,
    Column("balance_type_id", ForeignKey("balance_types.id"), primary_key=True),
    Column("threshold", BigInteger, nullable=False),
    CheckConstraint("threshold > 0", name="threshold_positive"),
)

# Operators are alerted when the available vouchers of the type fall below the threshold.
stock_thresholds = Table(
    "stock_thresholds",
    metadata,
    Column("voucher_type_id", ForeignKey("voucher_types.id"), primary_key=True),
    Column("threshold", BigInteger, nullable=False),
    CheckConstraint("threshold > 0", name="threshold_positive"),
)

# One row per occurrence of an alert: the unique occurrence key makes "once" hold across
# restarts and concurrent runs. A condition that can come back (a low balance) keeps its
# plain key while it lasts; once over, its key gets ":<id>" appended, so the next time
# is a new occurrence. Delivery claims rows (claim, next_attempt_at) before sending.
alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("occurrence_key", String(200), nullable=False, unique=True),
    Column("kind", String(24), nullable=False),
    Column("audience", String(10), nullable=False),
    Column("service_provider_id", Integer),
    Column("subscriber_id", BigInteger),
    Column("msisdn", String(15)),
    Column("subject_id", BigInteger),  # balance type, voucher type, batch or job run
    Column("subject_at", UTCDateTime()),  # the expiry the alert is about
    Column("amount", BigInteger),  # balance, vouchers in stock, blacklistings
    Column("threshold", BigInteger),
    Column("data", JSON),
    _created_at(),
    Column("resolved_at", UTCDateTime()),
    Column("state", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime()),
    Column("claim", String(32)),
    Column("sent_at", UTCDateTime()),
    Column("error", String(300)),
    CheckConstraint("audience IN ('subscriber', 'operator')", name="audience"),
    CheckConstraint("state IN ('pending', 'sent', 'failed', 'skipped', 'dropped')", name="state"),
    Index("ix_alerts_state", "state", "next_attempt_at"),
    Index("ix_alerts_kind_open", "kind", "resolved_at"),
    Index("ix_alerts_claim", "claim"),
)


# --- events: the outbox, its destinations and their deliveries (migration 0006_events) ---
# An event is written to the outbox in the transaction that causes it; the relay fans it
# out to one delivery per matching destination and delivers each destination's events in
# the outbox's order, at least once (docs/events.md). Never a PIN in ``data``.
event_outbox = Table(
    "event_outbox",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),  # the CloudEvent id
    Column("type", String(40), nullable=False),
    Column("subject", String(100)),
    Column("service_provider_id", Integer),  # null: not a provider's (job.failed)
    Column("data", JSON, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("dispatched", Boolean, nullable=False, server_default=text("false")),
    Index("ix_event_outbox_pending", "dispatched", "seq"),
    Index("ix_event_outbox_at", "at"),
)

# Where events go: webhooks (added by admins), NATS and RabbitMQ (from VOMS_NATS_URL and
# VOMS_AMQP_URL; their credentials stay in the environment). A webhook's secret is kept
# encrypted under the keyring's encryption key.
event_destinations = Table(
    "event_destinations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(10), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("secret", LargeBinary),
    Column("secret_key_id", SmallInteger),
    Column("events", JSON),  # the event types it wants; null: every one
    Column("service_provider_id", ForeignKey("service_providers.id")),
    Column("state", String(10), nullable=False),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    CheckConstraint("kind IN ('webhook', 'nats', 'amqp')", name="kind"),
    CheckConstraint("state IN ('active', 'disabled')", name="state"),
)

event_deliveries = Table(
    "event_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "destination_id",
        ForeignKey("event_destinations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("event_seq", BigInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("first_failed_at", UTCDateTime()),
    Column("delivered_at", UTCDateTime()),
    Column("last_error", String(300)),
    UniqueConstraint("destination_id", "event_seq", name="uq_event_deliveries_event"),
    CheckConstraint("state IN ('pending', 'delivered', 'dead')", name="state"),
    Index("ix_event_deliveries_queue", "destination_id", "state", "event_seq"),
)


# --- promotions (migration 0006_promo) -------------------------------------------------
# Promotion plans, a counter per plan and subscriber, and the rewards granted. See
# services/promotions/ and docs/promotions.md.

promotions = Table(
    "promotions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_provider_id", ForeignKey("service_providers.id"), nullable=False),
    Column("code", String(32), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime()),
    Column("window_kind", String(16), nullable=False),
    Column("window_days", Integer),
    Column("counter", String(8), nullable=False),
    Column("target", BigInteger, nullable=False),
    Column("repeat", Boolean, nullable=False),
    # {"voucher_type_ids": [...], "channels": [...], "product_type_ids": [...]}; empty: all
    Column("eligible", JSON, nullable=False),
    # {"credits": [{"balance_type_id", "amount", "balance_expiry_extension_days"}],
    #  "account_expiry_extension_days", "percent_of_value", "new_product_type_id"}
    Column("reward", JSON, nullable=False),
    Column("created_by", String(100), nullable=False),
    _created_at(),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(
        "window_kind IN ('calendar_month', 'rolling_days', 'campaign')", name="window_kind"
    ),
    CheckConstraint("counter IN ('count', 'value')", name="counter"),
    CheckConstraint("target > 0", name="target_positive"),
    CheckConstraint(
        "window_kind != 'rolling_days' OR window_days > 0", name="rolling_days_positive"
    ),
)

# One row per plan and subscriber: the counter of its current window. A redemption adds
# to it with one upsert; a window that has ended starts again at that redemption.
promotion_counters = Table(
    "promotion_counters",
    metadata,
    Column("promotion_id", ForeignKey("promotions.id"), primary_key=True),
    Column("subscriber_id", ForeignKey("subscribers.id"), primary_key=True),
    Column("window_start", UTCDateTime(), nullable=False),
    Column("window_end", UTCDateTime(), nullable=False),
    Column("value", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_promotion_counters_subscriber", "subscriber_id"),
)

# Every reward granted, written in the redemption's transaction (the ledger rows of the
# credits carry cause 'reward' and the same transaction_id). ``value`` is what the
# reward credited in money (balance types with a currency), for the rewards report.
promotion_rewards = Table(
    "promotion_rewards",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("promotion_id", ForeignKey("promotions.id"), nullable=False),
    Column("service_provider_id", Integer, nullable=False),
    Column("subscriber_id", ForeignKey("subscribers.id"), nullable=False),
    Column("msisdn", String(15), nullable=False),
    Column("transaction_id", String(36), nullable=False),
    Column("times", Integer, nullable=False),
    Column("credits", JSON, nullable=False),
    Column("account_expiry_extension_days", Integer, nullable=False),
    Column("new_product_type_id", Integer),
    Column("value", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),  # "" when no money was credited
    CheckConstraint("times > 0", name="times_positive"),
    Index("ix_promotion_rewards_at", "at"),
    Index("ix_promotion_rewards_subscriber", "subscriber_id", "at"),
)
