"""Distribution routes (docs/api.md "Distribution"): partners, exports and their download
links, and the import of legacy vouchers."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from voms.api.batches import BatchPublic
from voms.api.deps import BatchWriter, Exporter, RuntimeDep
from voms.api.paging import LIMIT_DEFAULT, Cursor, Limit, Page
from voms.services import distribution, paging, voucher_import
from voms.services.distribution import ExportIn, PartnerIn, PartnerKeyIn

router = APIRouter(prefix="/api/v1", tags=["distribution"])
Json = dict[str, Any]
ExportId = Annotated[int, Path(ge=1, le=2**31 - 1)]
MAX_IMPORT_CHARS = 64 << 20  # larger files: `voms import FILE`
MAX_REPORTED_LINES = 1_000


class PartnerPublic(BaseModel):
    name: str
    contact: str | None
    service_provider: str | None
    key_fingerprint: str
    key_user_ids: list[str]
    key_expires_at: datetime | None
    state: str
    created_by: str
    created_at: datetime
    disabled_at: datetime | None


class ExportPublic(BaseModel):
    export_id: int
    partner: str
    service_provider: str
    format: str
    filters: dict[str, Any]
    reissue: bool
    voucher_count: int
    reissued_count: int
    serial_first: str | None
    serial_last: str | None
    key_fingerprint: str
    file_name: str
    sha256: str = Field(description="SHA-256 of the encrypted file")
    size_bytes: int
    download_expires_at: datetime | None
    created_by: str
    created_at: datetime
    state: str = Field(
        description="exporting (voucher_count is then the number that matched), exported or failed"
    )
    exported_count: int = Field(description="vouchers claimed so far")
    updated_at: datetime
    error: str | None = Field(description="why it failed")


class ExportCreated(ExportPublic):
    download_url: str | None = Field(
        description="GET it with a distributor or admin key of the provider, before "
        "download_expires_at; the file opens only with the partner's OpenPGP key"
    )


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csv: Annotated[str, StringConstraints(max_length=MAX_IMPORT_CHARS)] = Field(
        description="Lines of serial,pin,voucher_type,expires_at (a header line is optional)"
    )
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


@router.post("/partners", status_code=status.HTTP_201_CREATED, response_model=PartnerPublic)
def create_partner(body: PartnerIn, rt: RuntimeDep, who: Exporter) -> Json:
    """Add a partner with its ASCII-armored OpenPGP public key; expired, revoked or
    sign-only keys are refused (422)."""
    return distribution.create_partner(rt, who, body)


@router.get("/partners", response_model=Page[PartnerPublic])
def list_partners(
    rt: RuntimeDep, who: Exporter, limit: Limit = LIMIT_DEFAULT, cursor: Cursor = None
) -> Json:
    """Partners by name."""
    after = paging.decode(cursor, str)
    rows = distribution.list_partners(rt, who, after=after[0] if after else None, limit=limit + 1)
    return paging.page(rows, limit, lambda row: (row["name"],))


@router.get("/partners/{name}", response_model=PartnerPublic)
def get_partner(name: str, rt: RuntimeDep, who: Exporter) -> Json:
    return distribution.get_partner(rt, who, name)


@router.put("/partners/{name}/public-key", response_model=PartnerPublic)
def replace_partner_key(name: str, body: PartnerKeyIn, rt: RuntimeDep, who: Exporter) -> Json:
    """Give the partner a new key (checked as when the partner was added)."""
    return distribution.replace_partner_key(rt, who, name, body)


@router.post("/partners/{name}/disable", response_model=PartnerPublic)
def disable_partner(name: str, rt: RuntimeDep, who: Exporter) -> Json:
    return distribution.disable_partner(rt, who, name)


@router.post("/exports", status_code=status.HTTP_201_CREATED, response_model=ExportCreated)
def create_export(body: ExportIn, request: Request, rt: RuntimeDep, who: Exporter) -> Json:
    """Export the matching vouchers (not redeemed, deleted or expired) encrypted to the
    partner's key; vouchers exported before need `"reissue": true`. Above
    VOMS_BACKGROUND_EXPORT_THRESHOLD vouchers it runs in the background: the answer says
    `exporting`, GET /exports/{id} shows the progress, and the link works once `exported`."""
    record = distribution.order_export(rt, who, body)
    token = record.pop("download_token")
    url = request.url_for("download_export_file", export_id=record["export_id"])
    record["download_url"] = f"{url}?token={token}" if token else None
    return record


@router.get("/exports", response_model=Page[ExportPublic])
def list_exports(
    rt: RuntimeDep,
    who: Exporter,
    partner: str | None = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Json:
    """Exports newest first, optionally to one partner."""
    before = paging.decode(cursor, int)
    rows = distribution.list_exports(
        rt, who, partner=partner, before_id=before[0] if before else None, limit=limit + 1
    )
    return paging.page(rows, limit, lambda row: (row["export_id"],))


@router.get("/exports/{export_id}", response_model=ExportPublic)
def get_export(export_id: ExportId, rt: RuntimeDep, who: Exporter) -> Json:
    return distribution.get_export(rt, who, export_id)


@router.get(
    "/exports/{export_id}/file",
    name="download_export_file",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/pgp-encrypted": {}}}},
)
def download_export_file(
    export_id: ExportId,
    token: Annotated[str, Query(max_length=100)],
    rt: RuntimeDep,
    who: Exporter,
) -> StreamingResponse:
    """The encrypted file (OpenPGP, binary), while its link is valid: 410 after."""
    found = distribution.open_export_file(rt, who, export_id, token)
    return StreamingResponse(
        found.chunks,
        media_type="application/pgp-encrypted",
        headers={
            "Content-Disposition": f'attachment; filename="{found.file_name}"',
            "Content-Length": str(found.size_bytes),
            "X-Content-SHA256": found.sha256,
        },
    )


@router.post(
    "/imports",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchPublic,
    responses={422: {"description": "bad lines, each with its number; nothing imported"}},
)
def import_vouchers(body: ImportIn, rt: RuntimeDep, who: BatchWriter) -> Any:
    """Import vouchers made elsewhere into one new, inactive batch, all or nothing."""
    lines = body.csv.splitlines(keepends=True)
    try:
        return voucher_import.import_vouchers(rt, who, lambda: lines, request_id=body.request_id)
    except voucher_import.ImportRefused as refused:
        return JSONResponse(
            {
                "detail": refused.detail,
                "bad_line_count": len(refused.bad_lines),
                "bad_lines": [
                    {"line": bad.line, "reason": bad.reason}
                    for bad in refused.bad_lines[:MAX_REPORTED_LINES]
                ],
            },
            status_code=422,
        )
