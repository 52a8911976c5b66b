"""API keys and the audit log."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from voms.api.deps import AuditReader, KeyAdmin, RuntimeDep
from voms.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, AuditEntry
from voms.services import audit, auth

router = APIRouter(prefix="/api/v1", tags=["administration"])


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_api_key(body: ApiKeyCreate, rt: RuntimeDep, who: KeyAdmin) -> dict[str, Any]:
    record, secret = auth.create_api_key(
        rt,
        who,
        name=body.name,
        role=body.role,
        service_provider=body.service_provider,
        reseller=body.reseller,
        allow=body.allow,
    )
    return {**record, "key": secret}


@router.get("/api-keys", response_model=list[ApiKeyPublic])
def list_api_keys(rt: RuntimeDep, who: KeyAdmin) -> list[dict[str, Any]]:
    return auth.list_api_keys(rt, who)


@router.delete("/api-keys/{name}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_api_key(name: str, rt: RuntimeDep, who: KeyAdmin) -> None:
    auth.revoke_api_key(rt, who, name)


@router.get("/audit", response_model=list[AuditEntry])
def audit_log(
    rt: RuntimeDep,
    who: AuditReader,
    object_type: str | None = None,
    object_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return audit.read_audit_log(rt, who, object_type=object_type, object_id=object_id, limit=limit)
