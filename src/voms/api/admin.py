"""API keys and the audit log."""

from typing import Any

from fastapi import APIRouter, status

from voms.api.deps import AuditReader, KeyAdmin, RuntimeDep
from voms.api.paging import LIMIT_DEFAULT, Cursor, Limit, Page
from voms.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, AuditEntry
from voms.services import audit, auth, paging

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


@router.get("/api-keys", response_model=Page[ApiKeyPublic])
def list_api_keys(
    rt: RuntimeDep, who: KeyAdmin, limit: Limit = LIMIT_DEFAULT, cursor: Cursor = None
) -> dict[str, Any]:
    """Keys in the order they were created."""
    after = paging.decode(cursor, int)
    rows = auth.list_api_keys(rt, who, after_id=after[0] if after else None, limit=limit + 1)
    return paging.page(rows, limit, lambda row: (row["id"],))


@router.delete("/api-keys/{name}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_api_key(name: str, rt: RuntimeDep, who: KeyAdmin) -> None:
    auth.revoke_api_key(rt, who, name)


@router.get("/audit", response_model=Page[AuditEntry])
def audit_log(
    rt: RuntimeDep,
    who: AuditReader,
    object_type: str | None = None,
    object_id: str | None = None,
    by: str | None = None,
    action: str | None = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Newest first; filter by object, who acted (`by`) and action."""
    before = paging.decode(cursor, int)
    rows = audit.read_audit_log(
        rt,
        who,
        object_type=object_type,
        object_id=object_id,
        by=by,
        action=action,
        before_id=before[0] if before else None,
        limit=limit + 1,
    )
    return paging.page(rows, limit, lambda row: (row["id"],))
