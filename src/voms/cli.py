"""The ``voms`` command line (Typer). Sub-commands mirror the services."""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from voms.config import get_settings
from voms.crypto import Keyring, KeyringError, load_keyring, write_keyring
from voms.domain.errors import VomsError
from voms.runtime import Runtime, build_runtime

app = typer.Typer(
    name="voms",
    help="OpenVoMS: prepaid voucher management (catalog, vouchers, redemption, wallet).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="PIN lookup and encryption keys.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for integrations and channels.", no_args_is_help=True)
catalog_app = typer.Typer(
    help="Service providers, balance/product/voucher types.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(apikey_app, name="apikey")
app.add_typer(catalog_app, name="catalog")
housekeeping_app = typer.Typer(help="Scheduled jobs, run at once.", no_args_is_help=True)
app.add_typer(housekeeping_app, name="housekeeping")


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


@contextmanager
def handled() -> Iterator[None]:
    """Turn expected failures into one clear line on stderr and a non-zero exit."""
    try:
        yield
    except VomsError as exc:
        fail(exc.detail)
    except KeyringError as exc:
        hint = " (a new installation creates keys with `voms keys init`)"
        fail(f"{exc}{hint if 'not found' in str(exc) else ''}")
    except ValidationError as exc:
        fail(
            "invalid input: "
            + "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        )
    except SQLAlchemyError as exc:
        fail(f"database error: {exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}")


def runtime() -> Runtime:
    with handled():
        return build_runtime(get_settings())
    raise AssertionError("unreachable")


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


# --- serve -------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address [default: VOMS_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: VOMS_PORT or 8000]")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes [default: VOMS_WORKERS or 1]")
    ] = None,
) -> None:
    """Run the HTTP service. On the embedded default, creates keys and schema on first run."""
    import uvicorn

    from voms.bootstrap import StartupError, prepare
    from voms.logs import configure_logging

    settings = get_settings()
    configure_logging(settings)
    try:
        prepared = prepare(settings)
    except StartupError as exc:
        fail(str(exc))
        return
    prepared.runtime.engine.dispose()
    if prepared.created_keys_file:
        typer.echo(
            f"Created key file {settings.resolved_keys_file()} (mode 0600). Back it up: "
            "without it no PIN can be redeemed or exported."
        )
    if prepared.first_admin_key:
        typer.echo("First start: an admin API key was created. It is shown only this once:")
        typer.echo(f"  {prepared.first_admin_key}")
    n_workers = workers or settings.workers
    if n_workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="voms-metrics-")
    uvicorn.run(
        "voms.api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=n_workers,
        log_config=None,
        proxy_headers=True,
    )


# --- db ----------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Apply the schema migrations (PostgreSQL: run once before starting servers)."""
    from voms.db.engine import make_engine
    from voms.db.migrate import current_revision, upgrade

    with handled():
        engine = make_engine(get_settings())
        upgrade(engine, revision)
        typer.echo(f"database at revision {current_revision(engine)}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the newest one this version knows."""
    from voms.db.engine import make_engine
    from voms.db.migrate import current_revision, head_revision

    with handled():
        engine = make_engine(get_settings())
        typer.echo(f"database: {current_revision(engine) or 'empty'}; newest: {head_revision()}")


# --- keys --------------------------------------------------------------------------

KeysFileOption = Annotated[
    Path | None,
    typer.Option(
        "--keys-file", help="Key file [default: VOMS_KEYS_FILE or beside the SQLite file]"
    ),
]


def _keys_file(option: Path | None) -> Path:
    return option or get_settings().resolved_keys_file()


@keys_app.command("init")
def keys_init(keys_file: KeysFileOption = None) -> None:
    """Create the key file (mode 0600) for a new installation. Never overwrites one."""
    path = _keys_file(keys_file)
    with handled():
        write_keyring(path, Keyring.new())
    typer.echo(
        f"created {path}: 1 lookup key, 1 encryption key. Back it up, apart from the "
        "database backups."
    )


@keys_app.command("show")
def keys_show(keys_file: KeysFileOption = None) -> None:
    """List key ids and which are active (never the key material)."""
    with handled():
        keyring = load_keyring(_keys_file(keys_file))
        echo_json(
            {
                "lookup_keys": sorted(keyring.lookup_keys),
                "active_lookup_key": keyring.active_lookup_key_id,
                "encryption_keys": sorted(keyring.encryption_keys),
                "active_encryption_key": keyring.active_encryption_key_id,
            }
        )


# --- API keys ----------------------------------------------------------------------


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Option(help="Unique name of the client, e.g. ussd-gw-1")],
    role: Annotated[
        str, typer.Option(help="admin, operator, distributor, care, channel or auditor")
    ],
    service_provider: Annotated[
        str | None, typer.Option(help="Scope the key to this provider code")
    ] = None,
) -> None:
    """Create an API key; the key is printed as the last line and never shown again."""
    from voms.services import auth

    with handled():
        record, secret = auth.create_api_key(
            runtime(), auth.CONSOLE, name=name, role=role, service_provider=service_provider
        )
        scope = record["service_provider"] or "all service providers"
        typer.echo(f"created API key '{name}' (role {record['role']}, {scope}):", err=True)
        typer.echo(secret)


@apikey_app.command("list")
def apikey_list() -> None:
    """List API keys (names, roles, scope; never the keys)."""
    from voms.services import auth

    with handled():
        echo_json(auth.list_api_keys(runtime(), auth.CONSOLE))


@apikey_app.command("revoke")
def apikey_revoke(name: Annotated[str, typer.Argument(help="Name of the key")]) -> None:
    """Revoke an API key; servers stop accepting it within seconds."""
    from voms.services import auth

    with handled():
        auth.revoke_api_key(runtime(), auth.CONSOLE, name)
        typer.echo(f"revoked '{name}'")


# --- catalog -----------------------------------------------------------------------


@catalog_app.command("import")
def catalog_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON catalog file")],
) -> None:
    """Create the objects of a JSON catalog file: keys service_providers, balance_types,
    product_types, voucher_types, each a list of bodies as in the REST API."""
    from voms.services import auth, catalog

    steps: list[tuple[str, type[Any], Any]] = [
        ("service_providers", catalog.ServiceProviderIn, catalog.create_service_provider),
        ("balance_types", catalog.BalanceTypeIn, catalog.create_balance_type),
        ("product_types", catalog.ProductTypeIn, catalog.create_product_type),
        ("voucher_types", catalog.VoucherTypeIn, catalog.create_voucher_type),
    ]
    try:
        content = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read {file}: {exc}")
    if not isinstance(content, dict):
        fail(f"{file}: expected a JSON object")
    rt = runtime()
    with handled():
        for key, model, create in steps:
            for index, item in enumerate(content.get(key, [])):
                try:
                    body = model.model_validate(item)
                except ValidationError as exc:
                    fail(f"{key}[{index}]: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
                create(rt, auth.CONSOLE, body)
                typer.echo(f"created {key[:-1].replace('_', ' ')} {item.get('code')}")


@catalog_app.command("show")
def catalog_show(
    service_provider: Annotated[str | None, typer.Option(help="Only this provider")] = None,
) -> None:
    """Print the catalog as JSON."""
    from voms.services import auth, catalog

    with handled():
        rt = runtime()
        echo_json(
            {
                "service_providers": catalog.list_service_providers(rt, auth.CONSOLE),
                "balance_types": catalog.list_balance_types(rt, auth.CONSOLE, service_provider),
                "product_types": catalog.list_product_types(rt, auth.CONSOLE, service_provider),
                "voucher_types": catalog.list_voucher_types(rt, auth.CONSOLE, service_provider),
            }
        )


# --- housekeeping and verification -------------------------------------------------


@housekeeping_app.command("run")
def housekeeping_run() -> None:
    """Do all due work now: expired reservations (their voucher type's timeout action),
    request ids past retention, ended blacklists."""
    from voms.services import housekeeping

    with handled():
        echo_json(housekeeping.run_due(runtime()))


@app.command()
def verify() -> None:
    """Check the invariants of vouchers, transactions, ledger and balances; exit 1 naming
    what is broken."""
    from voms.services.verify import verify as check

    with handled():
        report = check(runtime())
        counts = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in report.counts.items())
        if report.ok:
            typer.echo(f"OK: every invariant holds ({counts})")
            return
        for problem in report.problems:
            typer.secho(f"BROKEN: {problem}", err=True, fg=typer.colors.RED)
        fail(f"{len(report.problems)} invariant(s) broken ({counts})")


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="voms")
