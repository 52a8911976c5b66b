"""Catalog routes (docs/api.md "Administration"): translate HTTP to catalog services."""

from typing import Any

from fastapi import APIRouter, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import Field

from voms.api.deps import CatalogReader, CatalogWriter, RuntimeDep
from voms.api.paging import LIMIT_DEFAULT, Cursor, Limit, Page
from voms.api.schemas import (
    BalanceTypePublic,
    ProductTypePublic,
    ScenarioPublic,
    ServiceProviderPublic,
    VoucherTypePublic,
)
from voms.services import catalog, paging
from voms.services.catalog import (
    BalanceTypeIn,
    BalanceTypeUpdate,
    ProductTypeIn,
    ProductTypeUpdate,
    ServiceProviderIn,
    ServiceProviderUpdate,
    VoucherTypeIn,
    VoucherTypeUpdate,
)

router = APIRouter(prefix="/api/v1", tags=["catalog"])
_SAME: dict[int | str, dict[str, Any]] = {
    200: {"description": "It existed with exactly these fields: creating is idempotent"}
}
CREATED = status.HTTP_201_CREATED
Json = dict[str, Any]


def _created_or_found(outcome: tuple[Json, bool]) -> Any:
    """201 with a new object; 200 with the one that existed with the same fields."""
    found, created = outcome
    if created:
        return found
    return JSONResponse(jsonable_encoder(found), status_code=status.HTTP_200_OK)


@router.post(
    "/service-providers", status_code=CREATED, responses=_SAME, response_model=ServiceProviderPublic
)
def create_service_provider(body: ServiceProviderIn, rt: RuntimeDep, who: CatalogWriter) -> Any:
    return _created_or_found(catalog.create_or_find_service_provider(rt, who, body))


@router.get("/service-providers", response_model=Page[ServiceProviderPublic])
def list_service_providers(
    rt: RuntimeDep, who: CatalogReader, limit: Limit = LIMIT_DEFAULT, cursor: Cursor = None
) -> Json:
    """Service providers by code."""
    rows = catalog.list_service_providers(
        rt, who, after=paging.decode(cursor, str), limit=limit + 1
    )
    return paging.page(rows, limit, lambda row: (row["code"],))


@router.get("/service-providers/{code}", response_model=ServiceProviderPublic)
def get_service_provider(code: str, rt: RuntimeDep, who: CatalogReader) -> Json:
    return catalog.get_service_provider(rt, who, code)


@router.patch("/service-providers/{code}", response_model=ServiceProviderPublic)
def update_service_provider(
    code: str, body: ServiceProviderUpdate, rt: RuntimeDep, who: CatalogWriter
) -> Json:
    return catalog.update_service_provider(rt, who, code, body)


@router.post(
    "/balance-types", status_code=CREATED, responses=_SAME, response_model=BalanceTypePublic
)
def create_balance_type(body: BalanceTypeIn, rt: RuntimeDep, who: CatalogWriter) -> Any:
    return _created_or_found(catalog.create_or_find_balance_type(rt, who, body))


@router.get("/balance-types", response_model=Page[BalanceTypePublic])
def list_balance_types(
    rt: RuntimeDep,
    who: CatalogReader,
    service_provider: str | None = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Json:
    """By service provider, then code."""
    after = paging.decode(cursor, str, str)
    rows = catalog.list_balance_types(rt, who, service_provider, after=after, limit=limit + 1)
    return paging.page(rows, limit, lambda row: (row["service_provider"], row["code"]))


@router.get("/balance-types/{service_provider}/{code}", response_model=BalanceTypePublic)
def get_balance_type(service_provider: str, code: str, rt: RuntimeDep, who: CatalogReader) -> Json:
    return catalog.get_balance_type(rt, who, service_provider, code)


@router.patch("/balance-types/{service_provider}/{code}", response_model=BalanceTypePublic)
def update_balance_type(
    service_provider: str, code: str, body: BalanceTypeUpdate, rt: RuntimeDep, who: CatalogWriter
) -> Json:
    return catalog.update_balance_type(rt, who, service_provider, code, body)


@router.post(
    "/product-types", status_code=CREATED, responses=_SAME, response_model=ProductTypePublic
)
def create_product_type(body: ProductTypeIn, rt: RuntimeDep, who: CatalogWriter) -> Any:
    return _created_or_found(catalog.create_or_find_product_type(rt, who, body))


@router.get("/product-types", response_model=Page[ProductTypePublic])
def list_product_types(
    rt: RuntimeDep,
    who: CatalogReader,
    service_provider: str | None = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Json:
    """By service provider, then code."""
    after = paging.decode(cursor, str, str)
    rows = catalog.list_product_types(rt, who, service_provider, after=after, limit=limit + 1)
    return paging.page(rows, limit, lambda row: (row["service_provider"], row["code"]))


@router.get("/product-types/{service_provider}/{code}", response_model=ProductTypePublic)
def get_product_type(service_provider: str, code: str, rt: RuntimeDep, who: CatalogReader) -> Json:
    return catalog.get_product_type(rt, who, service_provider, code)


@router.patch("/product-types/{service_provider}/{code}", response_model=ProductTypePublic)
def update_product_type(
    service_provider: str, code: str, body: ProductTypeUpdate, rt: RuntimeDep, who: CatalogWriter
) -> Json:
    return catalog.update_product_type(rt, who, service_provider, code, body)


@router.post(
    "/voucher-types", status_code=CREATED, responses=_SAME, response_model=VoucherTypePublic
)
def create_voucher_type(body: VoucherTypeIn, rt: RuntimeDep, who: CatalogWriter) -> Any:
    return _created_or_found(catalog.create_or_find_voucher_type(rt, who, body))


@router.get("/voucher-types", response_model=Page[VoucherTypePublic])
def list_voucher_types(
    rt: RuntimeDep,
    who: CatalogReader,
    service_provider: str | None = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Json:
    """Voucher types by code."""
    after = paging.decode(cursor, str)
    rows = catalog.list_voucher_types(rt, who, service_provider, after=after, limit=limit + 1)
    return paging.page(rows, limit, lambda row: (row["code"],))


@router.get("/voucher-types/{code}", response_model=VoucherTypePublic)
def get_voucher_type(code: str, rt: RuntimeDep, who: CatalogReader) -> Json:
    return catalog.get_voucher_type(rt, who, code)


@router.patch("/voucher-types/{code}", response_model=VoucherTypePublic)
def update_voucher_type(
    code: str, body: VoucherTypeUpdate, rt: RuntimeDep, who: CatalogWriter
) -> Json:
    return catalog.update_voucher_type(rt, who, code, body)


class ScenarioPage(Page[ScenarioPublic]):
    scenarios: list[ScenarioPublic] = Field(
        description="The same list as items, kept under its first name until version 2"
    )


@router.get("/voucher-types/{code}/scenarios", response_model=ScenarioPage)
def voucher_type_scenarios(
    code: str,
    rt: RuntimeDep,
    who: CatalogReader,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Json:
    """The voucher type's scenarios by number (a handful: read whole, answered by page)."""
    after = paging.decode(cursor, int)
    rows = [
        s for s in catalog.scenarios_of(rt, who, code) if after is None or s["number"] > after[0]
    ]
    page = paging.page(rows, limit, lambda row: (row["number"],))
    return {**page, "scenarios": page["items"]}
