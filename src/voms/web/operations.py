"""Dashboard, batches, vouchers, housekeeping, catalog and distribution pages."""

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from voms.domain.errors import Forbidden, Invalid, VomsError
from voms.domain.roles import Permission
from voms.domain.serials import parse_serial
from voms.domain.states import BatchState
from voms.services import (
    care,
    catalog,
    distribution,
    generation,
    housekeeping,
    lifecycle,
    overview,
    transactions,
)
from voms.services.housekeeping.registry import JOBS
from voms.services.people import Session
from voms.web.base import (
    NO_ERRORS,
    SECURITY_HEADERS,
    Column,
    ConsoleRoute,
    Fetch,
    FormErrors,
    by_key,
    call,
    checked_form,
    csv_download,
    field,
    filters_of,
    form_errors,
    newest_first,
    optional,
    page_url,
    paged,
    refused_status,
    render,
    require,
    runtime,
    see_other,
    table_page,
    viewer,
)

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)
Viewer = Annotated[Session, Depends(viewer)]


def _date(text: str | None, name: str) -> datetime | None:
    """A date typed in a form (YYYY-MM-DD) as the end of that day, UTC."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{name}: a date like 2027-12-31") from None
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


def _int(text: str | None, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise Invalid(f"{name}: a whole number")
    return int(text)


# --- dashboard --------------------------------------------------------------------------------


@router.get("/")
async def dashboard(request: Request, who: Viewer) -> Response:
    if not who.may(Permission.BATCH_READ):
        return render(request, who, "dashboard.html", title="Dashboard", nav="dashboard")
    figures = await call(overview.overview, runtime(request), who.principal)
    states = figures["vouchers_by_state"]
    return render(
        request,
        who,
        "dashboard.html",
        title="Dashboard",
        nav="dashboard",
        overview=figures,
        states_chart={
            "type": "bar",
            "labels": list(states),
            "series": {"vouchers": [f["vouchers"] for f in states.values()]},
        },
        hours_chart={
            "type": "line",
            "hours": True,
            "labels": [hour.isoformat() for hour in figures["hours"]],
            "series": figures["redemptions_per_hour"],
        },
    )


# --- batches ----------------------------------------------------------------------------------

_BATCH_COLUMNS = [
    Column("batch_id", "Batch", "link:/ui/batches/"),
    Column("state", "State"),
    Column("voucher_type", "Voucher type"),
    Column("service_provider", "Provider"),
    Column("count", "Vouchers"),
    Column("generated_count", "Generated"),
    Column("serial_first", "First serial"),
    Column("serial_last", "Last serial"),
    Column("expires_at", "Expires", "time"),
    Column("created_by", "Created by"),
    Column("created_at", "Created", "time"),
]


async def _voucher_type_codes(request: Request, who: Session) -> list[str]:
    types = await call(catalog.list_voucher_types, runtime(request), who.principal)
    return [vt["code"] for vt in types]


@router.get("/batches")
async def batches(request: Request, who: Viewer) -> Response:
    return await _batches_page(request, who)


async def _batches_page(
    request: Request, who: Session, errors: FormErrors = NO_ERRORS, status: int = 200
) -> Response:
    require(who, Permission.BATCH_READ)
    rt = runtime(request)
    wanted = filters_of(request, "state", "voucher_type", "service_provider")

    def fetch(cursor: str | None, limit: int) -> tuple[Sequence[Mapping[str, Any]], str | None]:
        return paged(
            lifecycle.list_batches(
                rt,
                who.principal,
                state=wanted["state"],
                voucher_type=wanted["voucher_type"],
                service_provider=wanted["service_provider"],
                limit=limit,
                cursor=cursor,
            )
        )

    table = await table_page(request, _BATCH_COLUMNS, fetch, "batches.csv", "Batches, newest first")
    if isinstance(table, StreamingResponse):
        return table
    types = await _voucher_type_codes(request, who)
    return render(
        request,
        who,
        "batches.html",
        status=status,
        errors=errors,
        open_form=errors.form == "generate",
        title="Batches",
        nav="batches",
        voucher_types=types,
        filter_items=[
            ("state", "State", wanted["state"], [s.value for s in BatchState]),
            ("voucher_type", "Voucher type", wanted["voucher_type"], types),
            ("service_provider", "Service provider", wanted["service_provider"], None),
        ],
        action="/ui/batches",
        table=table,
    )


@router.post("/batches")
async def generate(request: Request, who: Viewer) -> Response:
    require(who, Permission.BATCH_WRITE)
    form = await checked_form(request, who)
    rt = runtime(request)
    try:
        body = generation.BatchIn(
            voucher_type=field(form, "voucher_type"),
            count=_int(field(form, "count"), "count") or 0,
            expires_at=_date(optional(form, "expires_at"), "expires_at"),
        )
        # Always in the background: the page then shows the progress as it goes.
        created = await call(generation.create_batch, rt, who.principal, **body.model_dump())
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        return await _batches_page(request, who, form_errors("generate", exc, form), status)
    batch_id = created.batch["batch_id"]
    if created.is_new:
        generation.fill_in_background(rt, who.principal, batch_id)
    return see_other(f"/ui/batches/{batch_id}")


async def _batch(request: Request, who: Session, batch_id: int) -> dict[str, Any]:
    require(who, Permission.BATCH_READ)
    return await call(lifecycle.get_batch, runtime(request), who.principal, batch_id)


_EVENT_COLUMNS = [
    Column("at", "When", "time"),
    Column("action", "Action"),
    Column("actor", "By"),
    Column("affected", "Vouchers"),
    Column("reason", "Reason"),
    Column("detail", "Detail", "json"),
]


@router.get("/batches/{batch_id}")
async def batch_page(request: Request, who: Viewer, batch_id: int) -> Response:
    return await _batch_page(request, who, batch_id)


async def _batch_page(
    request: Request,
    who: Session,
    batch_id: int,
    errors: FormErrors = NO_ERRORS,
    status: int = 200,
) -> Response:
    batch = await _batch(request, who, batch_id)
    rt = runtime(request)

    fetch = newest_first(
        lambda before, limit: overview.batch_events(rt, who.principal, batch_id, limit, before),
        "id",
    )
    events = await table_page(
        request,
        _EVENT_COLUMNS,
        fetch,
        f"batch-{batch_id}.csv",
        "Operations on this batch, newest first",
    )
    if isinstance(events, StreamingResponse):
        return events
    return render(
        request,
        who,
        "batch.html",
        status=status,
        errors=errors,
        title=f"Batch {batch_id}",
        nav="batches",
        batch=batch,
        require_approval=rt.settings.require_approval,
        events=events,
    )


@router.get("/batches/{batch_id}/progress")
async def batch_progress(request: Request, who: Viewer, batch_id: int) -> Response:
    batch = await _batch(request, who, batch_id)
    return render(request, who, "progress.html", batch=batch)


@router.post("/batches/{batch_id}/action")
async def batch_action(request: Request, who: Viewer, batch_id: int) -> Response:
    require(who, Permission.BATCH_WRITE)
    form = await checked_form(request, who)
    action, reason = field(form, "action"), optional(form, "reason")
    try:
        if action in ("freeze", "unfreeze", "delete") and not reason:
            raise Invalid(f"reason: give a reason to {action} a batch")
        await call(
            lifecycle.change_batch, runtime(request), who.principal, batch_id, action, reason
        )
    except (VomsError, ValidationError) as exc:
        if isinstance(exc, Forbidden) and "four-eyes" in exc.detail:
            errors = form_errors("batch", exc, form)
            return await _batch_page(request, who, batch_id, errors, 403)
        status = refused_status(exc)
        return await _batch_page(request, who, batch_id, form_errors("batch", exc, form), status)
    return see_other(f"/ui/batches/{batch_id}")


@router.post("/batches/{batch_id}/expiry")
async def batch_expiry(request: Request, who: Viewer, batch_id: int) -> Response:
    require(who, Permission.BATCH_WRITE)
    form = await checked_form(request, who)
    try:
        expires_at = _date(optional(form, "expires_at"), "expires_at")
        if expires_at is None:
            raise Invalid("expires_at: give the new expiry date")
        await call(lifecycle.amend_batch, runtime(request), who.principal, batch_id, expires_at)
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        return await _batch_page(request, who, batch_id, form_errors("expiry", exc, form), status)
    return see_other(f"/ui/batches/{batch_id}")


@router.post("/vouchers/range")
async def voucher_range(request: Request, who: Viewer) -> Response:
    require(who, Permission.BATCH_WRITE)
    form = await checked_form(request, who)
    reason = optional(form, "reason")
    try:
        if not reason:
            raise Invalid("reason: say why")
        done = await call(
            lifecycle.change_vouchers,
            runtime(request),
            who.principal,
            field(form, "action"),
            field(form, "serial_from"),
            optional(form, "serial_to"),
            reason,
        )
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        return await _batches_page(request, who, form_errors("range", exc, form), status)
    return render(
        request,
        who,
        "error.html",
        title="Range done",
        detail=(
            f"{done['action']}: {done['affected']} of {done['matched']} vouchers in "
            f"{done['serial_from']} to {done['serial_to']} changed, {done['unchanged']} left alone."
        ),
    )


# --- vouchers ---------------------------------------------------------------------------------

_HISTORY_COLUMNS = [
    Column("at", "When", "time"),
    Column("action", "Action"),
    Column("actor", "By"),
    Column("reason", "Reason"),
    Column("channel", "Channel"),
    Column("msisdn", "MSISDN"),
]
_ATTEMPT_COLUMNS = [
    Column("at", "When", "time"),
    Column("kind", "Kind"),
    Column("result_code", "Result"),
    Column("result_text", "Result text"),
    Column("channel", "Channel"),
    Column("msisdn", "MSISDN"),
    Column("recipient_msisdn", "Recipient"),
    Column("actor", "By"),
]


async def _voucher_page(
    request: Request,
    who: Session,
    voucher: dict[str, Any] | None,
    serial: str,
    errors: FormErrors = NO_ERRORS,
    status: int = 200,
) -> Response:
    attempts: list[dict[str, Any]] = []
    attempts_next = None
    if voucher is not None:
        number = parse_serial(voucher["serial"], runtime(request).settings.serial_width)
        found = await call(
            transactions.list_transactions,
            runtime(request),
            who.principal,
            serial=number,
            limit=50,
            cursor=request.query_params.get("cursor") or None,
        )
        attempts = found["transactions"]
        if found["next_cursor"]:
            attempts_next = page_url(request, serial=voucher["serial"], cursor=found["next_cursor"])
    return render(
        request,
        who,
        "vouchers.html",
        status=status,
        errors=errors,
        title="Vouchers",
        nav="vouchers",
        serial=serial,
        voucher=voucher,
        history_columns=_HISTORY_COLUMNS,
        attempt_columns=_ATTEMPT_COLUMNS,
        attempts=attempts,
        attempts_next=attempts_next,
    )


@router.get("/vouchers")
async def vouchers(request: Request, who: Viewer) -> Response:
    require(who, Permission.LOOKUP)
    serial = (request.query_params.get("serial") or "").strip()
    voucher = None
    if serial:
        try:
            voucher = await call(care.voucher_by_serial, runtime(request), who.principal, serial)
        except (VomsError, ValidationError) as exc:
            status = refused_status(exc)
            values = {"serial": serial}
            return await _voucher_page(
                request, who, None, serial, form_errors("serial", exc, values), status
            )
    return await _voucher_page(request, who, voucher, serial)


@router.post("/vouchers/by-pin")
async def voucher_by_pin(request: Request, who: Viewer) -> Response:
    require(who, Permission.LOOKUP)
    form = await checked_form(request, who)
    try:
        voucher = await call(
            care.voucher_by_pin, runtime(request), who.principal, field(form, "pin")
        )
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        return await _voucher_page(request, who, None, "", form_errors("pin", exc, form), status)
    return await _voucher_page(request, who, voucher, "")


# --- housekeeping -----------------------------------------------------------------------------

_RUN_COLUMNS = [
    Column("id", "Run", "link:/ui/housekeeping/runs/"),
    Column("job", "Job"),
    Column("outcome", "Outcome"),
    Column("trigger", "Trigger"),
    Column("started_at", "Started", "time"),
    Column("finished_at", "Finished", "time"),
    Column("rows_affected", "Rows"),
    Column("error", "Error"),
]


@router.get("/housekeeping")
async def housekeeping_page(request: Request, who: Viewer) -> Response:
    require(who, Permission.HOUSEKEEPING, Permission.AUDIT_READ)
    rt = runtime(request)
    wanted = filters_of(request, "job", "outcome")

    def fetch(cursor: str | None, limit: int) -> tuple[Sequence[Mapping[str, Any]], str | None]:
        position = _int(cursor, "cursor")
        return paged(
            housekeeping.list_runs(
                rt,
                who.principal,
                job=wanted["job"],
                outcome=wanted["outcome"],
                limit=limit,
                cursor=position,
            )
        )

    table = await table_page(request, _RUN_COLUMNS, fetch, "job-runs.csv", "Runs, newest first")
    if isinstance(table, StreamingResponse):
        return table
    jobs = await call(housekeeping.list_jobs, rt, who.principal)
    return render(
        request,
        who,
        "housekeeping.html",
        title="Housekeeping",
        nav="housekeeping",
        jobs=jobs,
        can_run=who.may(Permission.HOUSEKEEPING) and who.service_provider_id is None,
        filter_items=[
            ("job", "Job", wanted["job"], sorted(JOBS)),
            ("outcome", "Outcome", wanted["outcome"], list(housekeeping.OUTCOMES)),
        ],
        action="/ui/housekeeping",
        table=table,
    )


@router.post("/housekeeping/{job}/run")
async def run_job(request: Request, who: Viewer, job: str) -> Response:
    require(who, Permission.HOUSEKEEPING)
    await checked_form(request, who)
    run = await call(housekeeping.start_job, runtime(request), who.principal, job)
    return see_other(f"/ui/housekeeping/runs/{run['id']}")


@router.get("/housekeeping/runs/{run_id}")
async def run_page(request: Request, who: Viewer, run_id: int) -> Response:
    require(who, Permission.HOUSEKEEPING, Permission.AUDIT_READ)
    run = await call(housekeeping.get_run, runtime(request), who.principal, run_id)
    return render(request, who, "run.html", title=f"Run {run_id}", nav="housekeeping", run=run)


@router.get("/housekeeping/runs/{run_id}/progress")
async def run_progress(request: Request, who: Viewer, run_id: int) -> Response:
    require(who, Permission.HOUSEKEEPING, Permission.AUDIT_READ)
    run = await call(housekeeping.get_run, runtime(request), who.principal, run_id)
    return render(request, who, "_run_facts.html", run=run)


# --- catalog ----------------------------------------------------------------------------------

_CATALOG: dict[str, tuple[str, list[Column]]] = {
    "service_providers": (
        "Service providers",
        [
            Column("code", "Code"),
            Column("name", "Name"),
            Column("recharge_limits", "Recharge limits", "json"),
            Column("created_at", "Created", "time"),
        ],
    ),
    "balance_types": (
        "Balance types",
        [
            Column("service_provider", "Provider"),
            Column("code", "Code"),
            Column("name", "Name"),
            Column("unit", "Unit"),
            Column("currency", "Currency"),
            Column("max_balance", "Max balance"),
        ],
    ),
    "product_types": (
        "Product types",
        [Column("service_provider", "Provider"), Column("code", "Code"), Column("name", "Name")],
    ),
    "voucher_types": (
        "Voucher types and their scenarios",
        [
            Column("service_provider", "Provider"),
            Column("code", "Code"),
            Column("name", "Name"),
            Column("pin_length", "PIN length"),
            Column("validity_days", "Validity (days)"),
            Column("allowed_product_types", "Product types", "json"),
            Column("scenarios", "Scenarios", "json"),
            Column("scenario_selection", "Scenario selection"),
        ],
    ),
}


@router.get("/catalog")
async def catalog_page(request: Request, who: Viewer) -> Response:
    require(who, Permission.CATALOG_READ)
    rt, actor = runtime(request), who.principal
    provider = filters_of(request, "service_provider")["service_provider"]

    def by_code(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (row["code"],)

    def by_provider_and_code(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (row["service_provider"], row["code"])

    # Each table pages by its own key (services/paging), with its own cursor parameter.
    fetches: dict[str, Fetch] = {
        "service_providers": by_key(
            lambda after, n: (
                ([] if after else [catalog.get_service_provider(rt, actor, provider)])
                if provider
                else catalog.list_service_providers(rt, actor, after=after, limit=n)
            ),
            by_code,
            str,
        ),
        "balance_types": by_key(
            lambda after, n: catalog.list_balance_types(rt, actor, provider, after=after, limit=n),
            by_provider_and_code,
            str,
            str,
        ),
        "product_types": by_key(
            lambda after, n: catalog.list_product_types(rt, actor, provider, after=after, limit=n),
            by_provider_and_code,
            str,
            str,
        ),
        "voucher_types": by_key(
            lambda after, n: catalog.list_voucher_types(rt, actor, provider, after=after, limit=n),
            by_code,
            str,
        ),
    }
    sections = []
    for name, (title, columns) in _CATALOG.items():
        table = await table_page(request, columns, fetches[name], f"{name}.csv", title, name=name)
        if isinstance(table, StreamingResponse):
            return table
        sections.append({"name": name, "table": table})
    providers = await call(catalog.list_service_providers, rt, actor)
    return render(
        request,
        who,
        "catalog.html",
        title="Catalog",
        nav="catalog",
        sections=sections,
        service_provider=provider,
        provider_codes=[p["code"] for p in providers],
    )


# --- distribution -----------------------------------------------------------------------------

_PARTNER_COLUMNS = [
    Column("name", "Partner"),
    Column("contact", "Contact"),
    Column("service_provider", "Provider"),
    Column("state", "State"),
    Column("key_fingerprint", "Key fingerprint"),
    Column("key_expires_at", "Key expires", "time"),
    Column("created_at", "Added", "time"),
]
_EXPORT_COLUMNS = [
    Column("export_id", "Export"),
    Column("partner", "Partner"),
    Column("service_provider", "Provider"),
    Column("format", "Format"),
    Column("voucher_count", "Vouchers"),
    Column("serial_first", "First serial"),
    Column("serial_last", "Last serial"),
    Column("sha256", "File SHA-256"),
    Column("created_by", "By"),
    Column("created_at", "When", "time"),
]


def _exports_fetch(request: Request, who: Session, partner: str | None) -> Fetch:
    rt = runtime(request)
    return newest_first(
        lambda before, limit: distribution.list_exports(
            rt, who.principal, partner=partner, before_id=before, limit=limit
        ),
        "export_id",
    )


_PARTNER_STATES = ["active", "disabled"]


def _partners_fetch(request: Request, who: Session) -> Fetch:
    """Partners by name, filtered by the page's ``partner_state`` and ``partner_name``
    (names starting with it); the cursor is the last name shown."""
    rt, wanted = runtime(request), filters_of(request, "partner_state", "partner_name")
    return by_key(
        lambda after, limit: distribution.list_partners(
            rt,
            who.principal,
            state=wanted["partner_state"],
            name_prefix=wanted["partner_name"],
            after=after[0] if after else None,
            limit=limit,
        ),
        lambda row: (row["name"],),
        str,
    )


async def _distribution_page(
    request: Request,
    who: Session,
    created: dict[str, Any] | None = None,
    errors: FormErrors = NO_ERRORS,
    status: int = 200,
) -> Response:
    require(who, Permission.EXPORT)
    rt = runtime(request)
    partner = filters_of(request, "partner")["partner"]
    exports = await table_page(
        request,
        _EXPORT_COLUMNS,
        _exports_fetch(request, who, partner),
        "exports.csv",
        f"Exports to {partner}, newest first" if partner else "Exports, newest first",
    )
    if isinstance(exports, StreamingResponse):
        return exports
    partner_table = await table_page(
        request,
        _PARTNER_COLUMNS,
        _partners_fetch(request, who),
        "partners.csv",
        "Partners by name",
        name="partners",
    )
    if isinstance(partner_table, StreamingResponse):
        return partner_table
    # The forms' choices: every partner (a handful per provider).
    partners = await call(distribution.list_partners, rt, who.principal)
    wanted = filters_of(request, "partner_state", "partner_name")
    download_url = None
    if created is not None and created.get("download_token"):
        download_url = f"/ui/exports/{created['export_id']}/file?token={created['download_token']}"
    return render(
        request,
        who,
        "distribution.html",
        status=status,
        errors=errors,
        title="Distribution",
        nav="distribution",
        created=created,
        download_url=download_url,
        batch_id=request.query_params.get("batch_id", ""),
        partner_names=[p["name"] for p in partners if p["state"] == "active"],
        partners=partners,
        partner_table=partner_table,
        partner_filter_items=[
            ("partner_state", "State", wanted["partner_state"], _PARTNER_STATES),
            ("partner_name", "Name starts with", wanted["partner_name"], None),
        ],
        partner=partner,
        exports=exports,
    )


@router.get("/distribution")
async def distribution_page(request: Request, who: Viewer) -> Response:
    return await _distribution_page(request, who)


@router.get("/distribution/partners.csv")
async def partners_csv(request: Request, who: Viewer) -> Response:
    require(who, Permission.EXPORT)
    return csv_download(_PARTNER_COLUMNS, _partners_fetch(request, who), "partners.csv")


@router.post("/partners")
async def add_partner(request: Request, who: Viewer) -> Response:
    require(who, Permission.EXPORT)
    form = await checked_form(request, who)
    try:
        body = distribution.PartnerIn(
            name=field(form, "name"),
            contact=optional(form, "contact"),
            public_key=field(form, "public_key"),
        )
        await call(distribution.create_partner, runtime(request), who.principal, body)
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        errors = form_errors("partner", exc, form)
        return await _distribution_page(request, who, None, errors, status)
    return see_other("/ui/distribution")


@router.post("/partners/key")
async def replace_partner_key(request: Request, who: Viewer) -> Response:
    """Give a partner a new OpenPGP key (rotation, or the old one expired)."""
    require(who, Permission.EXPORT)
    form = await checked_form(request, who)
    try:
        body = distribution.PartnerKeyIn(public_key=field(form, "public_key"))
        await call(
            distribution.replace_partner_key,
            runtime(request),
            who.principal,
            field(form, "name"),
            body,
        )
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        errors = form_errors("partner_key", exc, form)
        return await _distribution_page(request, who, None, errors, status)
    return see_other("/ui/distribution?key_replaced=1")


@router.post("/partners/{name}/disable")
async def disable_partner(request: Request, who: Viewer, name: str) -> Response:
    require(who, Permission.EXPORT)
    await checked_form(request, who)
    await call(distribution.disable_partner, runtime(request), who.principal, name)
    return see_other("/ui/distribution")


@router.post("/exports")
async def export(request: Request, who: Viewer) -> Response:
    require(who, Permission.EXPORT)
    form = await checked_form(request, who)
    try:
        body = distribution.ExportIn(
            partner=field(form, "partner"),
            batch_id=_int(optional(form, "batch_id"), "batch_id"),
            serial_from=optional(form, "serial_from"),
            serial_to=optional(form, "serial_to"),
            format=field(form, "format") or "csv",
        )
        created = await call(distribution.create_export, runtime(request), who.principal, body)
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        errors = form_errors("export", exc, form)
        return await _distribution_page(request, who, None, errors, status)
    return await _distribution_page(request, who, created)


@router.get("/exports/{export_id}/file")
async def export_file(request: Request, who: Viewer, export_id: int) -> Response:
    require(who, Permission.EXPORT)
    token = request.query_params.get("token", "")[:100]
    found = await call(
        distribution.open_export_file, runtime(request), who.principal, export_id, token
    )
    return StreamingResponse(
        found.chunks,
        media_type="application/pgp-encrypted",
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="{found.file_name}"',
            "Content-Length": str(found.size_bytes),
        },
    )
