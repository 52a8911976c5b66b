"""Response models of the REST API (request models live with their services)."""

from datetime import datetime

from pydantic import BaseModel, Field


class ServiceProviderPublic(BaseModel):
    code: str
    name: str
    created_at: datetime


class BalanceTypePublic(BaseModel):
    code: str
    name: str
    unit: str
    currency: str | None
    service_provider: str
    max_balance: int | None
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
    created_at: datetime


class ApiKeyCreate(BaseModel):
    name: str
    role: str
    service_provider: str | None = None
    allow: list[str] = Field(
        default_factory=list, description="Rights beyond the role: voucher-type-recharge"
    )


class ApiKeyCreated(BaseModel):
    id: int
    name: str
    role: str
    service_provider: str | None
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
