"""The ``voms`` command line (Typer). Sub-commands mirror the services."""

import gc
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from voms.config import Settings, get_settings
from voms.crypto import Keyring, KeyringError, load_keyring, write_keyring
from voms.domain.errors import VomsError
from voms.runtime import Runtime, build_runtime
from voms.services.auth import Principal

# What the imports made lives as long as the process: out of the garbage collector's way,
# no later collection scans it again, the one at exit included (that one alone took a
# quarter of a second of every command).
gc.freeze()

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


def fail(message: str, code: int = 1) -> NoReturn:
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
        fail("invalid input: " + "; ".join(_problem(e) for e in exc.errors()))
    except SQLAlchemyError as exc:
        fail(f"database error: {exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}")


def _problem(error: Any) -> str:
    """One validation error: where (when it is a field), then what."""
    where = ".".join(str(part) for part in error["loc"])
    what = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {what}" if where else what


def load_settings() -> Settings:
    """The settings from the environment; a bad value ends the command with one line."""
    with handled():
        return get_settings()
    raise AssertionError("unreachable")


def runtime() -> Runtime:
    with handled():
        return build_runtime(get_settings())
    raise AssertionError("unreachable")


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


# --- serve -------------------------------------------------------------------------


def _check_texts(settings: Settings) -> None:
    """A texts file that cannot be used stops the start in one line, not a traceback."""
    from voms.channels.texts import TextsError, load

    try:
        load(settings.texts_file, settings.channel_language)
    except TextsError as exc:
        fail(f"VOMS_TEXTS_FILE: {exc}")


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

    settings = load_settings()
    configure_logging(settings)
    _check_texts(settings)
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
        _hand_over_first_key(settings, prepared.first_admin_key)
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
        # The app believes X-Forwarded-* from VOMS_TRUSTED_PROXIES only (voms.api.forwarded);
        # uvicorn's own handling would believe any loopback caller.
        proxy_headers=False,
    )


def _hand_over_first_key(settings: Settings, key: str) -> None:
    """Show the first admin key on a terminal; when standard output is a file or a pipe
    (a log, most likely), write it to a 0600 file beside the database instead."""
    if sys.stdout.isatty():
        typer.echo("First start: an admin API key was created. It is shown only this once:")
        typer.echo(f"  {key}")
        return
    path = settings.resolved_keys_file().with_name("voms-first-admin-key").resolve()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    typer.echo(
        f"First start: an admin API key was created and written to {path} (mode 0600), "
        "not here, since this output is no terminal. Read it, then delete the file."
    )


@app.command()
def agi(
    host: Annotated[
        list[str] | None,
        typer.Option(help="Bind address, repeatable [default: VOMS_AGI_HOST or 127.0.0.1]"),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: VOMS_AGI_PORT or 4573]")] = None,
) -> None:
    """Run the FastAGI server for Asterisk (IVR recharges); only the addresses in
    VOMS_AGI_ALLOWED_CLIENTS may connect."""
    import asyncio

    from voms.channels import agi as fastagi
    from voms.db.migrate import is_up_to_date
    from voms.logs import configure_logging

    settings = load_settings()
    configure_logging(settings)
    _check_texts(settings)
    rt = runtime()
    with handled():
        if not is_up_to_date(rt.engine):
            fail("the database schema is not current: run `voms db upgrade` (or `voms serve`)")
        hosts = host or [h.strip() for h in settings.agi_host.split(",") if h.strip()]
        try:
            fastagi.prompts_of(rt)
            fastagi.allowed_networks(settings.agi_allowed_clients)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"FastAGI on {', '.join(hosts)} port {port or settings.agi_port}", err=True)
        try:
            asyncio.run(fastagi.serve(rt, hosts, port or settings.agi_port))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            fail(f"cannot listen: {exc.strerror or exc}")


# --- db ----------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Apply the schema migrations (PostgreSQL: run once before starting servers)."""
    from voms.bootstrap import create_private_database_file
    from voms.db.engine import make_engine
    from voms.db.migrate import current_revision, upgrade

    with handled():
        settings = load_settings()
        create_private_database_file(settings)
        engine = make_engine(settings)
        upgrade(engine, revision)
        typer.echo(f"database at revision {current_revision(engine)}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the newest one this version knows."""
    from voms.db.engine import make_engine
    from voms.db.migrate import current_revision, head_revision

    with handled():
        engine = make_engine(load_settings())
        typer.echo(f"database: {current_revision(engine) or 'empty'}; newest: {head_revision()}")


# --- keys --------------------------------------------------------------------------

KeysFileOption = Annotated[
    Path | None,
    typer.Option(
        "--keys-file", help="Key file [default: VOMS_KEYS_FILE or beside the SQLite file]"
    ),
]


def _keys_file(option: Path | None) -> Path:
    return option or load_settings().resolved_keys_file()


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
def keys_show(
    keys_file: KeysFileOption = None,
    counts: Annotated[
        bool, typer.Option(help="Count the vouchers using each key (reads the database)")
    ] = True,
) -> None:
    """List key ids, which are active, and how many vouchers use each (never key material)."""
    with handled():
        keyring = load_keyring(_keys_file(keys_file))
        shown: dict[str, Any] = {
            "lookup_keys": sorted(keyring.lookup_keys),
            "active_lookup_key": keyring.active_lookup_key_id,
            "encryption_keys": sorted(keyring.encryption_keys),
            "active_encryption_key": keyring.active_encryption_key_id,
        }
        if counts:
            from voms.db.engine import make_engine
            from voms.services.housekeeping.reencryption import key_usage

            settings = load_settings()
            engine = make_engine(settings)
            try:
                shown.update(key_usage(Runtime(settings, engine, keyring)))
            finally:
                engine.dispose()
        echo_json(shown)


@keys_app.command("rotate")
def keys_rotate(keys_file: KeysFileOption = None) -> None:
    """Add a new encryption key (it becomes the active one); the key_reencryption job then
    re-encrypts every PIN under it. Old keys stay until nothing uses them."""
    from voms.crypto import KEYS_ENV

    path = _keys_file(keys_file)
    with handled():
        if os.environ.get(KEYS_ENV):
            raise KeyringError(f"keys come from {KEYS_ENV}: rotate them there, not in a file")
        keyring = load_keyring(path).with_new_encryption_key()
        write_keyring(path, keyring, overwrite=True)
    typer.echo(
        f"{path}: encryption key {keyring.active_encryption_key_id} added and active. "
        "Servers pick it up within a minute (or on restart); the key_reencryption job "
        "moves existing PINs to it (`voms housekeeping run --job key_reencryption`). "
        "Back up the key file again."
    )


@keys_app.command("secret")
def keys_secret(
    name: Annotated[str, typer.Argument(help="The secret's name; billing names it keys:NAME")],
    keys_file: KeysFileOption = None,
) -> None:
    """Store a named secret of another system (a charging system's password, an HTTP
    engine's signing secret) in the key file, read from standard input: the database
    only ever holds its name (docs/charging.md "Secrets")."""
    import dataclasses
    import re

    from voms.crypto import KEYS_ENV

    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", name):
        fail("a secret's name is 1 to 100 letters, digits, '_', '.' or '-'")
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        fail("give the secret on standard input")
    path = _keys_file(keys_file)
    with handled():
        if os.environ.get(KEYS_ENV):
            raise KeyringError(f"keys come from {KEYS_ENV}: add the secret there")
        keyring = load_keyring(path)
        secrets = {**keyring.secrets, name: value}
        write_keyring(path, dataclasses.replace(keyring, secrets=secrets), overwrite=True)
    typer.echo(
        f"{path}: secret {name} stored; name it keys:{name}. Copy the key file to every "
        "server (read at start)."
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
    reseller: Annotated[
        str | None,
        typer.Option(help="A distributor key of this reseller code: its subtree only"),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            help="A right beyond the role (repeatable): voucher-type-recharge (credit a "
            "wallet without a voucher)"
        ),
    ] = None,
) -> None:
    """Create an API key; the key is printed as the last line and never shown again."""
    from voms.services import auth

    with handled():
        record, secret = auth.create_api_key(
            runtime(),
            auth.CONSOLE,
            name=name,
            role=role,
            service_provider=service_provider,
            reseller=reseller,
            allow=allow or (),
        )
        scope = record["service_provider"] or "all service providers"
        if reseller:
            scope = f"reseller {reseller}"
        rights = "".join(f", allowed {right}" for right in record["allow"])
        typer.echo(f"created API key '{name}' (role {record['role']}, {scope}{rights}):", err=True)
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
    product_types, voucher_types, each a list of bodies as in the REST API. An object
    that exists with the same fields is left as it is; with other fields, the import
    stops and names them."""
    from voms.services import auth, catalog

    steps: list[tuple[str, type[Any], Any]] = [
        ("service_providers", catalog.ServiceProviderIn, catalog.create_or_find_service_provider),
        ("balance_types", catalog.BalanceTypeIn, catalog.create_or_find_balance_type),
        ("product_types", catalog.ProductTypeIn, catalog.create_or_find_product_type),
        ("voucher_types", catalog.VoucherTypeIn, catalog.create_or_find_voucher_type),
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
                _, created = create(rt, auth.CONSOLE, body)
                done = "created" if created else "already there:"
                typer.echo(f"{done} {key[:-1].replace('_', ' ')} {item.get('code')}")


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


@housekeeping_app.command("list")
def housekeeping_list() -> None:
    """The jobs: schedule, next run, last run."""
    from voms.services import housekeeping

    rt = runtime()
    with handled():
        for job in housekeeping.list_jobs(rt, _operator()):
            last = job["last_run"]
            typer.echo(
                f"{job['name']:<22} {job['schedule'] or 'off':<14} "
                f"next {job['next_run_at'] or '-'}  last "
                + (
                    f"{last['outcome']} {last['rows_affected']} rows at {last['started_at']}"
                    if last
                    else "never"
                )
            )
            typer.echo(f"  {job['description']}")


@housekeeping_app.command("run")
def housekeeping_run(
    job: Annotated[
        list[str] | None, typer.Option("--job", help="Run only this job (repeatable)")
    ] = None,
) -> None:
    """Run jobs now (all by default), with progress; exits 1 if any failed or was busy."""
    from voms.channels import sms
    from voms.services import housekeeping
    from voms.services.housekeeping.registry import JOBS

    rt = runtime()
    sms.install_alerts(rt)  # alert_delivery sends subscriber alerts through Kannel
    names = job or list(JOBS)
    unknown = [name for name in names if name not in JOBS]
    if unknown:
        fail(f"unknown job: {', '.join(unknown)} (see `voms housekeeping list`)")
    failed = False
    for name in names:

        def progress(rows: int, total: int, name: str = name) -> None:
            typer.echo(f"{name}: {total} rows", err=True)

        try:
            result = housekeeping.run_job(rt, _operator(), name, progress=progress)
        except VomsError as exc:
            typer.secho(f"{name}: {exc.detail}", err=True, fg=typer.colors.YELLOW)
            failed = True
            continue
        failed = failed or result["outcome"] != "succeeded"
        echo_json(result)
    if failed:
        raise typer.Exit(1)


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


# --- batches and vouchers ----------------------------------------------------------

batch_app = typer.Typer(
    help="Voucher batches: generate, list, show, change state.", no_args_is_help=True
)
voucher_app = typer.Typer(
    help="One voucher or a serial range: show, attempts, freeze, unfreeze, delete, activate, "
    "amend.",
    no_args_is_help=True,
)
app.add_typer(batch_app, name="batch")
app.add_typer(voucher_app, name="voucher")


def _operator() -> Principal:
    """The console operator, named after the OS user so four-eyes approval means something."""
    import getpass

    from voms.domain.roles import Role

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Principal(name=f"console:{user}"[:100], role=Role.ADMIN)


def _aware(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option}: not an ISO 8601 time: {value!r}")
        raise AssertionError("unreachable") from None
    if moment.tzinfo is None:
        fail(f"{option}: give a UTC offset, e.g. 2027-12-31T23:59:59+00:00")
    return moment


@batch_app.command("generate")
def batch_generate(
    voucher_type: Annotated[str, typer.Option("--type", help="Voucher type code")],
    count: Annotated[int, typer.Option(help="How many vouchers (up to 10,000,000)")],
    expires_at: Annotated[
        str | None,
        typer.Option(help="ISO 8601 with offset [default: now + the type's validity_days]"),
    ] = None,
    request_id: Annotated[
        str | None, typer.Option(help="Makes a retried command generate nothing more")
    ] = None,
) -> None:
    """Generate a batch of vouchers now, with a progress bar; prints the batch."""
    from voms.services import generation, guessing

    expiry = _aware(expires_at, "--expires-at")
    chunk_size = load_settings().generation_chunk_size
    # The crypto workers start now, while the batch is created: ready for its first chunk.
    with (
        generation.started_workers(generation.workers_for(count, chunk_size)) as workers,
        handled(),
    ):
        rt = build_runtime(get_settings())
        created = generation.create_batch(
            rt,
            _operator(),
            voucher_type=voucher_type,
            count=count,
            expires_at=expiry,
            request_id=request_id,
        )
        batch = created.batch
        warning = guessing.weak_pin_warning(rt, voucher_type)
        if warning:
            typer.echo(f"warning: {warning}", err=True)
        if created.is_new:
            typer.echo(
                f"batch {batch['batch_id']}: serials {batch['serial_first']}"
                f"-{batch['serial_last']}",
                err=True,
            )
            with typer.progressbar(
                length=batch["count"], label="generating", file=sys.stderr
            ) as bar:
                shown = [0]

                def advance(done: int) -> None:
                    bar.update(done - shown[0])
                    shown[0] = done

                batch = generation.fill_batch(
                    rt, _operator(), batch["batch_id"], progress=advance, started=workers
                )
    echo_json(batch)


@batch_app.command("list")
def batch_list(
    state: Annotated[str | None, typer.Option(help="generating, generated, active…")] = None,
    voucher_type: Annotated[str | None, typer.Option("--type", help="Voucher type code")] = None,
    service_provider: Annotated[str | None, typer.Option(help="Provider code")] = None,
    limit: Annotated[int, typer.Option(help="Batches per page")] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
) -> None:
    """List batches, newest first."""
    from voms.services import lifecycle

    with handled():
        echo_json(
            lifecycle.list_batches(
                runtime(),
                _operator(),
                state=state,
                voucher_type=voucher_type,
                service_provider=service_provider,
                limit=limit,
                cursor=cursor,
            )
        )


@batch_app.command("show")
def batch_show(batch_id: Annotated[int, typer.Argument(help="Batch id")]) -> None:
    """Show one batch with its generation progress."""
    from voms.services import lifecycle

    with handled():
        echo_json(lifecycle.get_batch(runtime(), _operator(), batch_id))


def _batch_action(action: str) -> None:
    def change(
        batch_id: Annotated[int, typer.Argument(help="Batch id")],
        reason: Annotated[
            str | None, typer.Option(help="Why, e.g. stolen, damaged, investigation")
        ] = None,
    ) -> None:
        from voms.services import lifecycle

        with handled():
            echo_json(lifecycle.change_batch(runtime(), _operator(), batch_id, action, reason))

    change.__doc__ = f"{action.capitalize()} a whole batch (one row update)."
    batch_app.command(action)(change)


for _action in ("activate", "freeze", "unfreeze", "delete"):
    _batch_action(_action)


@batch_app.command("amend")
def batch_amend(
    batch_id: Annotated[int, typer.Argument(help="Batch id")],
    expires_at: Annotated[str, typer.Option(help="New expiry, ISO 8601 with offset")],
) -> None:
    """Change a batch's expiry."""
    from voms.services import lifecycle

    expiry = _aware(expires_at, "--expires-at")
    assert expiry is not None
    with handled():
        echo_json(lifecycle.amend_batch(runtime(), _operator(), batch_id, expiry))


@batch_app.command("fail-stalled")
def batch_fail_stalled(
    minutes: Annotated[int, typer.Option(min=1, help="No progress for this long")] = 30,
) -> None:
    """Mark failed the batches left generating by a crashed or killed process."""
    from datetime import timedelta

    from voms.services import generation

    with handled():
        failed = generation.fail_stalled_batches(runtime(), _operator(), timedelta(minutes=minutes))
        typer.echo(f"marked failed: {', '.join(map(str, failed)) or 'none'}")


@voucher_app.command("show")
def voucher_show(serial: Annotated[str, typer.Argument(help="Serial number")]) -> None:
    """Show a voucher's effective state and history (never its PIN)."""
    from voms.services import care

    with handled():
        echo_json(care.voucher_by_serial(runtime(), _operator(), serial))


def _voucher_action(action: str) -> None:
    def change(
        serial_from: Annotated[str, typer.Argument(help="First serial")],
        serial_to: Annotated[
            str | None, typer.Argument(help="Last serial [default: first]")
        ] = None,
        reason: Annotated[str | None, typer.Option(help="Why")] = None,
    ) -> None:
        from voms.services import lifecycle

        with handled():
            echo_json(
                lifecycle.change_vouchers(
                    runtime(), _operator(), action, serial_from, serial_to, reason
                )
            )

    change.__doc__ = f"{action.capitalize()} one voucher or a serial range."
    voucher_app.command(action)(change)


for _action in ("freeze", "unfreeze", "delete"):
    _voucher_action(_action)


@voucher_app.command("activate")
def voucher_activate(
    serial_from: Annotated[str, typer.Argument(help="First serial")],
    serial_to: Annotated[str | None, typer.Argument(help="Last serial [default: first]")] = None,
    reason: Annotated[str | None, typer.Option(help="Why, e.g. sold by a reseller")] = None,
) -> None:
    """Activate one voucher or a serial range of inactive batches (a partial range becomes
    a part of its batch, active; the rest of the batch stays inactive)."""
    from voms.services import ranges

    with handled():
        echo_json(ranges.activate_range(runtime(), _operator(), serial_from, serial_to, reason))


@voucher_app.command("amend")
def voucher_amend(
    serial_from: Annotated[str, typer.Argument(help="First serial")],
    serial_to: Annotated[str | None, typer.Argument(help="Last serial [default: first]")] = None,
    expires_at: Annotated[str, typer.Option(help="New expiry, ISO 8601 with offset")] = "",
    reason: Annotated[str | None, typer.Option(help="Why")] = None,
) -> None:
    """Give one voucher or a serial range another expiry."""
    from voms.services import ranges

    if not expires_at:
        fail("give --expires-at, e.g. 2027-12-31T23:59:59+00:00")
    expiry = _aware(expires_at, "--expires-at")
    assert expiry is not None
    with handled():
        echo_json(
            ranges.amend_range(runtime(), _operator(), serial_from, serial_to, expiry, reason)
        )


@voucher_app.command("attempts")
def voucher_attempts(
    serial: Annotated[str, typer.Argument(help="Serial number")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first")] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
) -> None:
    """The failed attempts made against a voucher: who, when, channel, result code."""
    from voms.services import care

    with handled():
        echo_json(care.voucher_attempts(runtime(), _operator(), serial, limit, cursor))


# --- customer care: blacklist, reversals ------------------------------------------

blacklist_app = typer.Typer(
    help="MSISDNs blocked after bad PINs or by hand: list, add, release.", no_args_is_help=True
)
transaction_app = typer.Typer(help="Redemption transactions: reverse.", no_args_is_help=True)
app.add_typer(blacklist_app, name="blacklist")
app.add_typer(transaction_app, name="transaction")


@blacklist_app.command("list")
def blacklist_list(
    msisdn: Annotated[str | None, typer.Option(help="Only this number")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
) -> None:
    """MSISDNs blocked now (reason bad_pins or manual, until, failures)."""
    from voms.services import blacklist

    with handled():
        echo_json(
            blacklist.list_blacklist(
                runtime(), _operator(), msisdn=msisdn, limit=limit, cursor=cursor
            )
        )


@blacklist_app.command("add")
def blacklist_add(
    msisdn: Annotated[str, typer.Argument(help="The number to block")],
    reason: Annotated[str, typer.Option(help="Why (recorded and shown as the note)")],
    until: Annotated[
        str | None, typer.Option(help="ISO 8601 with offset [default: until released]")
    ] = None,
) -> None:
    """Block an MSISDN by hand: every channel answers 5003 to it."""
    from voms.services import blacklist

    moment = _aware(until, "--until")
    with handled():
        body = blacklist.BlockIn(msisdn=msisdn, reason=reason, until=moment)
        echo_json(blacklist.block(runtime(), _operator(), body))


@blacklist_app.command("release")
def blacklist_release(msisdn: Annotated[str, typer.Argument(help="The number to release")]) -> None:
    """Release an MSISDN; its bad-PIN count starts again at 0."""
    from voms.services import blacklist

    with handled():
        echo_json(blacklist.release(runtime(), _operator(), msisdn))


@transaction_app.command("reverse")
def transaction_reverse(
    transaction_id: Annotated[str, typer.Argument(help="The redemption's transaction id")],
    reason: Annotated[str, typer.Option(help="Why (recorded)")],
    reactivate_voucher: Annotated[
        bool,
        typer.Option(
            "--reactivate-voucher/--keep-voucher-used",
            help="Make the voucher active again, or leave it used",
        ),
    ],
    force: Annotated[
        bool, typer.Option(help="Take what is left when the credit was spent")
    ] = False,
    request_id: Annotated[
        str | None, typer.Option(help="Makes a retried command reverse nothing more")
    ] = None,
) -> None:
    """Take a redemption's credits back from the wallet (ledger cause reversal)."""
    from voms.services import reversal

    body = {
        "reason": reason,
        "reactivate_voucher": reactivate_voucher,
        "force": force,
        "request_id": request_id,
    }
    with handled():
        echo_json(reversal.reverse(runtime(), _operator(), transaction_id, body))


# --- partners, exports and legacy import (distribution) ---------------------------

partner_app = typer.Typer(
    help="Partners (print shops, distributors) that receive encrypted voucher files.",
    no_args_is_help=True,
)
export_app = typer.Typer(
    help="Export vouchers encrypted to a partner's OpenPGP key (or list past exports)."
)
app.add_typer(partner_app, name="partner")
app.add_typer(export_app, name="export")


PublicKeyFile = Annotated[
    Path, typer.Option(exists=True, dir_okay=False, help="ASCII-armored OpenPGP public key file")
]


@partner_app.command("add")
def partner_add(
    name: Annotated[str, typer.Option(help="Unique partner name")],
    public_key: PublicKeyFile,
    contact: Annotated[str | None, typer.Option(help="Who to call: e-mail, phone")] = None,
    service_provider: Annotated[
        str | None, typer.Option(help="Only this provider's vouchers [default: any]")
    ] = None,
) -> None:
    """Add a partner; its key must be valid and encryption-capable (not expired/revoked)."""
    from voms.services import distribution

    armored = _read_public_key(public_key)
    with handled():
        body = distribution.PartnerIn(
            name=name, public_key=armored, contact=contact, service_provider=service_provider
        )
        echo_json(distribution.create_partner(runtime(), _operator(), body))


def _read_public_key(path: Path) -> str:
    """An ASCII-armored key file's text; exits with the reason when it cannot be read."""
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")


@partner_app.command("list")
def partner_list() -> None:
    """List partners with their key fingerprints."""
    from voms.services import distribution

    with handled():
        echo_json(distribution.list_partners(runtime(), _operator()))


@partner_app.command("show")
def partner_show(name: Annotated[str, typer.Argument(help="Partner name")]) -> None:
    """Show one partner."""
    from voms.services import distribution

    with handled():
        echo_json(distribution.get_partner(runtime(), _operator(), name))


@partner_app.command("set-key")
def partner_set_key(
    name: Annotated[str, typer.Argument(help="Partner name")],
    public_key: PublicKeyFile,
) -> None:
    """Give a partner a new key (checked as when it was added)."""
    from voms.services import distribution

    armored = _read_public_key(public_key)
    with handled():
        body = distribution.PartnerKeyIn(public_key=armored)
        echo_json(distribution.replace_partner_key(runtime(), _operator(), name, body))


@partner_app.command("disable")
def partner_disable(name: Annotated[str, typer.Argument(help="Partner name")]) -> None:
    """Stop all further exports to a partner (past exports stay recorded)."""
    from voms.services import distribution

    with handled():
        echo_json(distribution.disable_partner(runtime(), _operator(), name))


@export_app.callback(invoke_without_command=True)
def export(
    ctx: typer.Context,
    partner: Annotated[str | None, typer.Option(help="Partner name")] = None,
    batch: Annotated[int | None, typer.Option(help="Only this batch")] = None,
    serial_from: Annotated[str | None, typer.Option(help="First serial of a range")] = None,
    serial_to: Annotated[str | None, typer.Option(help="Last serial of a range")] = None,
    voucher_type: Annotated[str | None, typer.Option(help="Only this voucher type")] = None,
    file_format: Annotated[str, typer.Option("--format", help="csv or xlsx")] = "csv",
    reissue: Annotated[
        bool, typer.Option(help="Export again vouchers that were exported before")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Encrypted file to write (.gpg)")
    ] = None,
) -> None:
    """Write the matching vouchers (not redeemed, deleted or expired) to an OpenPGP file
    only the partner's key opens; prints the export record (count, SHA-256)."""
    if ctx.invoked_subcommand is not None:
        return
    if partner is None or output is None:
        fail("give --partner NAME and --output FILE (or a command: list, show, purge)")
        return
    if file_format not in ("csv", "xlsx"):
        fail("--format is csv or xlsx")
    from voms.services import distribution

    if output.exists():
        fail(f"{output} exists; choose another file name")
    partial = output.with_name(output.name + ".partial")
    rt = runtime()
    with handled():
        body = distribution.ExportIn(
            partner=partner,
            batch_id=batch,
            serial_from=serial_from,
            serial_to=serial_to,
            voucher_type=voucher_type,
            format=file_format,
            reissue=reissue,
        )
        bar: Any = None
        try:
            with partial.open("xb") as handle:
                shown = [0]

                def advance(done: int, total: int) -> None:
                    nonlocal bar
                    if bar is None:
                        bar = typer.progressbar(length=total, label="exporting", file=sys.stderr)
                        bar.__enter__()
                    bar.update(done - shown[0])
                    shown[0] = done

                record = distribution.create_export(
                    rt, _operator(), body, output=handle, progress=advance
                )
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        partial.replace(output)
        record.pop("download_token", None)
        typer.echo(f"wrote {record['voucher_count']} vouchers to {output}", err=True)
        echo_json(record)


@export_app.command("list")
def export_list(
    partner: Annotated[str | None, typer.Option(help="Only exports to this partner")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
) -> None:
    """List exports: who, when, partner, filters, count, SHA-256 of the encrypted file."""
    from voms.services import distribution

    with handled():
        echo_json(distribution.list_exports(runtime(), _operator(), partner=partner, limit=limit))


@export_app.command("show")
def export_show(export_id: Annotated[int, typer.Argument(help="Export id")]) -> None:
    """Show one export record."""
    from voms.services import distribution

    with handled():
        echo_json(distribution.get_export(runtime(), _operator(), export_id))


@export_app.command("purge")
def export_purge() -> None:
    """Delete the kept encrypted files of exports whose download link has expired."""
    from voms.services import distribution

    with handled():
        chunks = distribution.purge_export_files(runtime())
        typer.echo(f"deleted {chunks} file chunk(s) of expired download links")


@app.command("import")
def import_legacy(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="CSV: serial,pin,voucher_type,expires_at (header line optional)",
        ),
    ],
    request_id: Annotated[
        str | None, typer.Option(help="Makes a retried command import nothing more")
    ] = None,
) -> None:
    """Import vouchers made by another system into one new, inactive batch. Every bad
    line is reported with its number; if there is one, nothing is imported."""
    from voms.services import voucher_import

    def read() -> Iterator[str]:
        with file.open(encoding="utf-8-sig", newline="") as handle:
            yield from handle

    rt = runtime()
    with handled():
        bar: Any = None
        try:
            shown = [0]

            def advance(done: int, total: int) -> None:
                nonlocal bar
                if bar is None:
                    bar = typer.progressbar(length=total, label="importing", file=sys.stderr)
                    bar.__enter__()
                bar.update(done - shown[0])
                shown[0] = done

            batch = voucher_import.import_vouchers(
                rt, _operator(), read, request_id=request_id, progress=advance
            )
        except voucher_import.ImportRefused as refused:
            for bad in refused.bad_lines:
                typer.echo(f"{file}:{bad.line}: {bad.reason}", err=True)
            fail(refused.detail)
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {file}: {exc}")
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        echo_json(batch)


# --- resellers -------------------------------------------------------------------------

reseller_app = typer.Typer(
    help="Resellers: accounts, stock, payments, statements.", no_args_is_help=True
)
app.add_typer(reseller_app, name="reseller")
SerialOption = Annotated[str, typer.Option(help="Serial number (digits)")]


@reseller_app.command("create")
def reseller_create(
    code: Annotated[str, typer.Option(help="Unique reseller code")],
    name: Annotated[str, typer.Option(help="Name shown on statements")],
    service_provider: Annotated[str, typer.Option(help="Provider code")],
    credit_limit: Annotated[int, typer.Option(help="Most it may owe, in minor units")],
    commission_percent: Annotated[str, typer.Option(help="Commission, e.g. 5 or 2.5")],
    parent: Annotated[str | None, typer.Option(help="Parent reseller code")] = None,
    currency: Annotated[
        str | None, typer.Option(help="Account currency [default: the provider's]")
    ] = None,
    contact: Annotated[str | None, typer.Option(help="Who to call: e-mail, phone")] = None,
) -> None:
    """Create a reseller (a sub-reseller with --parent)."""
    from voms.services.resellers import accounts

    body = {
        "code": code,
        "name": name,
        "service_provider": service_provider,
        "credit_limit": credit_limit,
        "commission_percent": commission_percent,
        "parent": parent,
        "currency": currency,
        "contact": contact,
    }
    with handled():
        found, _ = accounts.create_reseller(runtime(), _operator(), body)
        echo_json(found)


@reseller_app.command("list")
def reseller_list(
    parent: Annotated[str | None, typer.Option(help="Only the children of this one")] = None,
) -> None:
    """List resellers by code (every page)."""
    from voms.services.resellers import accounts

    rt, cursor, found = runtime(), None, []
    with handled():
        while True:
            page = accounts.list_resellers(
                rt, _operator(), parent=parent, limit=accounts.MAX_PAGE, cursor=cursor
            )
            found += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    echo_json(found)


@reseller_app.command("show")
def reseller_show(code: Annotated[str, typer.Argument(help="Reseller code")]) -> None:
    """A reseller with what it owes and the credit it has left."""
    from voms.services.resellers import accounts

    with handled():
        echo_json(accounts.get_reseller(runtime(), _operator(), code))


@reseller_app.command("stock")
def reseller_stock(
    code: Annotated[str, typer.Argument(help="Reseller code")],
    serial_from: SerialOption,
    serial_to: SerialOption,
) -> None:
    """Hand a range of inactive vouchers to a reseller (or move it down the tree)."""
    from voms.services.resellers import stock

    body = {"serial_from": serial_from, "serial_to": serial_to}
    with handled():
        echo_json(stock.hand_over(runtime(), _operator(), code, body))


@reseller_app.command("activate")
def reseller_activate(
    code: Annotated[str, typer.Argument(help="Reseller code")],
    serial_from: SerialOption,
    serial_to: SerialOption,
) -> None:
    """Activate a range of a reseller's printed cards, charged to the reseller."""
    from voms.services.resellers import sales

    body = {"serial_from": serial_from, "serial_to": serial_to}
    with handled():
        echo_json(sales.activate(runtime(), _operator(), code, body))


@reseller_app.command("payment")
def reseller_payment(
    code: Annotated[str, typer.Argument(help="Reseller code")],
    amount: Annotated[int, typer.Option(help="Received, in minor units")],
    reference: Annotated[str, typer.Option(help="Bank or receipt reference")],
    request_id: Annotated[
        str | None, typer.Option(help="Makes a repeated command record it once")
    ] = None,
) -> None:
    """Record money received from a reseller."""
    from voms.services.resellers import accounts

    body = {"amount": amount, "reference": reference, "request_id": request_id}
    with handled():
        found, _ = accounts.record_payment(runtime(), _operator(), code, body)
        echo_json(found)


@reseller_app.command("statement")
def reseller_statement(
    code: Annotated[str, typer.Argument(help="Reseller code")],
    since: Annotated[
        datetime | None, typer.Option(help="Start, UTC [default: start of this month]")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="End, UTC [default: now]")] = None,
    format: Annotated[str, typer.Option(help="json, csv or pdf")] = "json",
    output: Annotated[Path | None, typer.Option(help="File [default: standard output]")] = None,
) -> None:
    """A reseller's statement: opening + sales - commission - payments = closing."""
    from voms.services.resellers import statements

    if format not in ("json", "csv", "pdf"):
        fail("--format is json, csv or pdf")
    if format == "pdf" and output is None:
        fail("a PDF statement needs --output FILE")
    with handled():
        found = statements.statement(
            runtime(),
            _operator(),
            code,
            since=since.replace(tzinfo=UTC) if since else None,
            until=until.replace(tzinfo=UTC) if until else None,
        )
    if format == "json":
        data = (json.dumps(found, indent=2, default=str) + "\n").encode()
    elif format == "csv":
        data = statements.statement_csv(found).encode()
    else:
        data = statements.statement_pdf(found)
    if output is None:
        sys.stdout.buffer.write(data)
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {output}: {exc}")


@reseller_app.command("sell-through")
def reseller_sell_through(code: Annotated[str, typer.Argument(help="Reseller code")]) -> None:
    """Per reseller of the subtree and voucher type: on hand, sold, redeemed."""
    from voms.services.resellers import statements

    with handled():
        echo_json(statements.sell_through(runtime(), _operator(), code))


# --- reports and the transaction feed -------------------------------------------------


@app.command()
def report(
    name: Annotated[
        str,
        typer.Argument(
            help="inventory, liability, redemptions, failures, expiries, partners or summary"
        ),
    ],
    since: Annotated[str | None, typer.Option(help="Start, ISO 8601 with offset")] = None,
    until: Annotated[str | None, typer.Option(help="End (excluded), ISO 8601")] = None,
    service_provider: Annotated[str | None, typer.Option(help="Provider code")] = None,
    group_by: Annotated[str, typer.Option(help="redemptions: hour, day or month")] = "day",
    by: Annotated[
        str, typer.Option(help="redemptions: channel, voucher_type, service_provider, partner")
    ] = "channel",
    month: Annotated[str | None, typer.Option(help="summary: YYYY-MM")] = None,
    format: Annotated[str, typer.Option(help="json, csv, xlsx or pdf")] = "json",
    output: Annotated[Path | None, typer.Option(help="Write to this file")] = None,
) -> None:
    """Print (or write to --output) a report read from the rollups."""
    from voms.services import reports

    rt = runtime()
    with handled():
        query = reports.Query(since, until, service_provider, group_by, by, month)
        reports.check_format(format)
        body = reports.render(reports.run_report(rt, _operator(), name, query), format)
        if output is not None:
            output.write_bytes(body)
        elif format in ("xlsx", "pdf"):
            fail(f"{format} is binary: give --output FILE")
        else:
            sys.stdout.buffer.write(body)


@app.command()
def feed(
    day: Annotated[str | None, typer.Option(help="UTC day YYYY-MM-DD; default yesterday")] = None,
    directory: Annotated[Path | None, typer.Option(help="Default: VOMS_EXPORT_DIR")] = None,
) -> None:
    """Write one day's transactions as Parquet and CSV with a manifest (no PIN)."""
    from datetime import date, timedelta

    from voms.db.types import utcnow
    from voms.services.reports import feed as transaction_feed

    rt = runtime()
    try:
        chosen = date.fromisoformat(day) if day else utcnow().date() - timedelta(days=1)
    except ValueError:
        fail(f"--day: not a date YYYY-MM-DD: {day!r}")
    with handled():
        echo_json(transaction_feed.export_day(rt, chosen, directory))


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="voms")


# --- people (web console users) -----------------------------------------------------------

user_app = typer.Typer(help="People who sign in to the web console.", no_args_is_help=True)
app.add_typer(user_app, name="user")


def _password_from_stdin() -> str:
    """The first line of standard input, without its line end (never an argument: argv
    is visible to every user of the machine)."""
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        fail("no password on standard input")
    return password


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Option(help="Sign-in name, e.g. alice")],
    role: Annotated[
        str, typer.Option(help="admin, operator, distributor, care, channel or auditor")
    ],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    service_provider: Annotated[
        str | None, typer.Option(help="Limit the person to this provider code")
    ] = None,
    reseller: Annotated[
        str | None,
        typer.Option(help="Limit a distributor to this reseller and the resellers below it"),
    ] = None,
) -> None:
    """Create a person who signs in to the console at /ui/ (password read from stdin)."""
    from voms.services import people

    if not password_stdin:
        fail("give the password on standard input with --password-stdin")
    password = _password_from_stdin()
    with handled():
        record = people.create_user(
            runtime(),
            _operator(),
            username=username,
            role=role,
            password=password,
            service_provider=service_provider,
            reseller=reseller,
        )
        scope = record["service_provider"] or "all service providers"
        if record["reseller"]:
            scope = f"reseller {record['reseller']} of {scope}"
        typer.echo(f"created user '{record['username']}' (role {record['role']}, {scope})")


@user_app.command("list")
def user_list() -> None:
    """List people: username, role, scope, state, second factor, last sign-in."""
    from voms.services import people

    with handled():
        echo_json(people.list_users(runtime(), _operator()))


@user_app.command("disable")
def user_disable(username: Annotated[str, typer.Argument(help="Sign-in name")]) -> None:
    """Disable a person: no more sign-ins, and their open sessions end now."""
    from voms.services import people

    with handled():
        people.disable_user(runtime(), _operator(), username)
        typer.echo(f"disabled '{username}'")


@user_app.command("reset-password")
def user_reset_password(
    username: Annotated[str, typer.Argument(help="Sign-in name")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Set a new password (from stdin); lifts a lockout and ends the person's sessions."""
    from voms.services import people

    if not password_stdin:
        fail("give the password on standard input with --password-stdin")
    password = _password_from_stdin()
    with handled():
        people.reset_password(runtime(), _operator(), username, password)
        typer.echo(f"new password set for '{username}'")


# --- alerts --------------------------------------------------------------------------

alerts_app = typer.Typer(
    help="Alerts: thresholds and quiet hours per service provider, and what was sent.",
    no_args_is_help=True,
)
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("show")
def alerts_show(code: Annotated[str, typer.Argument(help="Service provider code")]) -> None:
    """The provider's alert settings and thresholds, as JSON."""
    from voms.services import alerts

    with handled():
        echo_json(alerts.get_settings(runtime(), _operator(), code))


@alerts_app.command("set")
def alerts_set(
    code: Annotated[str, typer.Argument(help="Service provider code")],
    settings: Annotated[
        str,
        typer.Argument(
            help="JSON merged into the settings, as the API's PATCH body, e.g. "
            '\'{"low_balance": {"CASH": 1000}, "quiet_hours": {"from": "21:00", '
            '"until": "08:00"}}\'; "-" reads it from standard input'
        ),
    ],
) -> None:
    """Change the provider's alert settings (a field left out is kept, null removes it)."""
    from voms.services import alerts

    raw = sys.stdin.read() if settings == "-" else settings
    try:
        data = json.loads(raw)
    except ValueError:
        fail("the settings are not JSON")
    with handled():
        body = alerts.AlertSettingsIn.model_validate(data)
        echo_json(alerts.update_settings(runtime(), _operator(), code, body))


@alerts_app.command("list")
def alerts_list(
    service_provider: Annotated[str | None, typer.Option(help="Only this provider")] = None,
    kind: Annotated[str | None, typer.Option(help="low_balance, voucher_stock, …")] = None,
    state: Annotated[str | None, typer.Option(help="pending, sent, failed, …")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
) -> None:
    """Alerts recorded, newest first."""
    from voms.services import alerts

    with handled():
        echo_json(
            alerts.list_alerts(
                runtime(),
                _operator(),
                service_provider=service_provider,
                kind=kind,
                state=state,
                limit=limit,
                cursor=cursor,
            )
        )


# --- events: webhooks, deliveries, the relay ---------------------------------------------

events_app = typer.Typer(
    help="Events: the relay, deliveries (dead letters included), replays.", no_args_is_help=True
)
webhook_app = typer.Typer(help="Webhooks that receive events: add, list, remove.")
app.add_typer(events_app, name="events")
app.add_typer(webhook_app, name="webhook")


@events_app.command("relay")
def events_relay() -> None:
    """Deliver events on their own (without `voms serve`) until stopped (Ctrl-C, SIGTERM).

    One relay delivers at a time across hosts; others wait for its lease.
    """
    import signal
    import threading

    from voms.logs import configure_logging
    from voms.services.events.relay import run_forever

    settings = load_settings()
    configure_logging(settings)
    rt = runtime()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with handled():
        run_forever(rt, stop)


@events_app.command("deliveries")
def events_deliveries(
    state: Annotated[
        str | None, typer.Option(help="pending, delivered or dead (the dead letters)")
    ] = None,
    destination: Annotated[int | None, typer.Option(help="Only this webhook/destination")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
) -> None:
    """Deliveries, newest first."""
    from voms.services.events import destinations

    if state not in (None, "pending", "delivered", "dead"):
        fail("--state is pending, delivered or dead")
    with handled():
        echo_json(
            destinations.list_deliveries(
                runtime(),
                _operator(),
                destination_id=destination,
                state=state,  # type: ignore[arg-type]
                limit=limit,
                cursor=cursor,
            )
        )


@events_app.command("replay")
def events_replay(
    delivery: Annotated[int | None, typer.Option(help="Deliver this delivery again")] = None,
    dead_of: Annotated[
        int | None, typer.Option(help="Deliver every dead letter of this destination again")
    ] = None,
) -> None:
    """Deliver again, with the same event ids: one delivery, or a destination's dead letters."""
    from voms.services.events import destinations

    with handled():
        echo_json(
            destinations.replay(
                runtime(), _operator(), delivery_id=delivery, destination_id=dead_of
            )
        )


@webhook_app.command("add")
def webhook_add(
    url: Annotated[str, typer.Option(help="Where events are POSTed (http or https)")],
    events: Annotated[str, typer.Option(help="Event types, comma-separated")],
    secret_stdin: Annotated[
        bool, typer.Option("--secret-stdin", help="Read the signing secret from standard input")
    ] = False,
    service_provider: Annotated[
        str | None, typer.Option(help="Only this provider's events [default: all]")
    ] = None,
) -> None:
    """Add a webhook; the signing secret (16-200 characters) is read from standard input."""
    from voms.services.events import destinations

    if not secret_stdin:
        fail("give the signing secret on standard input with --secret-stdin")
    secret = sys.stdin.readline().rstrip("\r\n")
    with handled():
        body = destinations.WebhookIn(
            url=url,
            secret=secret,
            events=[e.strip() for e in events.split(",") if e.strip()],
            service_provider=service_provider,
        )
        echo_json(destinations.add_webhook(runtime(), _operator(), body))


@webhook_app.command("list")
def webhook_list(
    all_kinds: Annotated[
        bool, typer.Option("--all", help="NATS and RabbitMQ destinations too")
    ] = False,
) -> None:
    """Webhooks, newest first."""
    from voms.services.events import destinations

    with handled():
        echo_json(
            destinations.list_destinations(
                runtime(), _operator(), kind=None if all_kinds else "webhook", limit=1000
            )
        )


@webhook_app.command("remove")
def webhook_remove(webhook_id: Annotated[int, typer.Argument(help="The webhook's id")]) -> None:
    """Stop a webhook (its deliveries stay to be looked at)."""
    from voms.services.events import destinations

    with handled():
        echo_json(destinations.remove_webhook(runtime(), _operator(), webhook_id))


# --- promotions ---------------------------------------------------------------------------

promotion_app = typer.Typer(
    help="Promotion plans: create, list, show, end; a subscriber's counters.",
    no_args_is_help=True,
)
app.add_typer(promotion_app, name="promotion")


@promotion_app.command("create")
def promotion_create(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="JSON body as POST /promotions")
    ],
) -> None:
    """Create a plan from a JSON file (the body of POST /api/v1/promotions); the same
    plan again is left as it is, another one with its code is refused."""
    from voms.services.promotions import plans

    try:
        content = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read {file}: {exc}")
    with handled():
        found, created = plans.create_or_find(
            runtime(), _operator(), plans.PromotionIn.model_validate(content)
        )
        typer.echo(f"{'created' if created else 'already there:'} promotion {found['code']}")


@promotion_app.command("list")
def promotion_list(
    service_provider: Annotated[str | None, typer.Option(help="Only this provider's")] = None,
) -> None:
    """The plans, newest first."""
    from voms.services.promotions import plans

    with handled():
        echo_json(plans.list_plans(runtime(), _operator(), service_provider, limit=1000))


@promotion_app.command("show")
def promotion_show(code: Annotated[str, typer.Argument(help="Plan code")]) -> None:
    """One plan."""
    from voms.services.promotions import plans

    with handled():
        echo_json(plans.get(runtime(), _operator(), code))


@promotion_app.command("end")
def promotion_end(
    code: Annotated[str, typer.Argument(help="Plan code")],
    at: Annotated[str | None, typer.Option(help="ISO 8601 with offset [default: now]")] = None,
) -> None:
    """End a plan (now, or at --at): redemptions after that count no more."""
    from voms.db.types import utcnow
    from voms.services.promotions import plans

    moment = _aware(at, "--at") or utcnow()
    with handled():
        echo_json(
            plans.update_plan(runtime(), _operator(), code, plans.PromotionUpdate(ends_at=moment))
        )


@promotion_app.command("counters")
def promotion_counters(msisdn: Annotated[str, typer.Argument(help="The subscriber")]) -> None:
    """A subscriber's counter in each plan: window, value, target, rewards earned."""
    from voms.services.promotions import counters

    with handled():
        echo_json(counters.counters_of(runtime(), _operator(), msisdn))
