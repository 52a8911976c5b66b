"""Response models of the REST API (request models live with their services)."""

from datetime import datetime
from typing import Annotated, Any, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
)
from typing_extensions import TypedDict


class ServiceProviderPublic(BaseModel):
    code: str
    name: str
    recharge_limits: dict[str, Any] | None = None
    created_at: datetime
    billing: dict[str, Any] = Field(
        default_factory=lambda: {"engine": "builtin"},
        description="Where the balances live (docs/charging.md); secrets as references only",
    )


class BalanceTypePublic(BaseModel):
    code: str
    name: str
    unit: str
    currency: str | None
    service_provider: str
    max_balance: int | None
    external_id: str | None = None
    created_at: datetime


class ProductTypePublic(BaseModel):
    code: str
    name: str
    service_provider: str
    created_at: datetime


class CreditPublic(BaseModel):
    balance_type: str
    amount: int
    balance_expiry_extension_days: int


class ScenarioPublic(BaseModel):
    number: int
    name: str
    default: bool
    credits: list[CreditPublic]
    account_expiry_extension_days: int
    new_product_type: str | None
    # A campaign scenario only: offered from valid_from until valid_until, to these
    # product types (docs/promotions.md).
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    product_types: list[str] | None = None

    @model_serializer(mode="wrap")
    def _campaign_only_when_set(self, handler: SerializerFunctionWrapHandler) -> "ScenarioShown":
        shown: dict[str, Any] = handler(self)
        return {k: v for k, v in shown.items() if k not in _CAMPAIGN or v is not None}  # type: ignore[return-value]


# A datetime, or its ISO text once serialized for JSON (documented as date-time).
_Moment = Annotated[datetime | str, WithJsonSchema({"type": "string", "format": "date-time"})]


class CreditShown(TypedDict):
    balance_type: str
    amount: int
    balance_expiry_extension_days: int


class ScenarioShown(TypedDict):
    """A scenario as answered: the campaign fields only when the scenario has them."""

    number: int
    name: str
    default: bool
    credits: list[CreditShown]
    account_expiry_extension_days: int
    new_product_type: str | None
    valid_from: NotRequired[_Moment]
    valid_until: NotRequired[_Moment]
    product_types: NotRequired[list[str]]


_CAMPAIGN = ("valid_from", "valid_until", "product_types")


class VoucherTypePublic(BaseModel):
    code: str
    name: str
    service_provider: str
    pin_length: int
    validity_days: int
    reservation_timeout_s: int
    timeout_action: str
    allowed_product_types: list[str]
    scenarios: list[ScenarioPublic]
    scenario_selection: str = "prompt"
    created_at: datetime


class ApiKeyCreate(BaseModel):
    name: str
    role: str
    service_provider: str | None = None
    reseller: str | None = None
    allow: list[str] = Field(
        default_factory=list, description="Rights beyond the role: voucher-type-recharge"
    )


class ApiKeyCreated(BaseModel):
    id: int
    name: str
    role: str
    service_provider: str | None
    reseller: str | None = None
    allow: list[str]
    key: str


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    prefix: str
    role: str
    service_provider: str | None
    allow: list[str]
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    service_provider_id: int | None
    detail: dict[str, object]


BIGINT_MAX = 2**63 - 1  # the largest id or serial a database column holds


# --- error answers, as documented on every operation ---------------------------------


class Problem(BaseModel):
    """An error answer: what went wrong, in words."""

    detail: str


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """A 422 answer: each refused input with where it is and why."""

    detail: list[ValidationItem]


class ResultAnswer(BaseModel):
    """A redemption-family answer (docs/api.md, Result codes); more fields may follow."""

    model_config = ConfigDict(extra="allow")

    result_code: int
    result_text: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` for the error statuses an operation may answer."""
    known: dict[int, dict[str, object]] = {
        401: {"model": Problem, "description": "Missing, invalid or revoked API key"},
        403: {
            "model": Problem,
            "description": "The key's role or service provider does not allow this",
        },
        404: {"model": Problem, "description": "Not found (told only to an allowed caller)"},
        409: {"model": Problem, "description": "Conflicts with what exists"},
        413: {"model": Problem, "description": "Body larger than VOMS_MAX_BODY_KB"},
        422: {"model": ValidationProblem, "description": "Refused input"},
        429: {"model": ResultAnswer, "description": "Too many requests (5007)"},
    }
    return {status: known[status] for status in statuses}


API_ERRORS = error_responses(401, 403, 404, 409, 413, 422, 429)
