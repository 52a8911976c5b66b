"""Redemptions over HTTP against the same transaction in raw SQL (pgbench), on PostgreSQL.

    .venv/bin/python bench/redeem.py [--workers 2] [--threads 4] [--concurrency 32]
                                     [--rounds 3] [--requests 6000] [--profile stacks.txt]
                                     [--promotions [--counters 1000000]]

Creates a scratch database (``voms_bench`` next to VOMS_TEST_POSTGRES_URL's), a catalog,
1,000 subscribers and active vouchers; starts ``voms serve --workers N``. Then, in each
round, drives redemptions from a separate process over keep-alive connections as fast as
it can (closed loop), and right after runs pgbench with the same SQL statements on other
vouchers, once with a round trip per statement and once with statements pipelined as the
service sends them. Run back to back, each round's ratio is measured under the same
conditions: on a shared machine the speed drifts between runs far more than the changes
measured here. Last comes a paced run at half the closed loop's median rate (open loop,
latency counted from the scheduled send time). Its first LEAD_IN requests are a lead-in,
reported on their own: the server has sat idle through pgbench, so its caches have
expired and the first requests find them cold; the run itself measures the steady
state. pgbench then runs the pipelined transaction at the same pace: its tail is the
host's own (a stall of the machine, a slow fsync), which the service cannot beat. Every
driver opens its connections before its clock starts. Prints each round,
the medians, the ratios, and the CPU each redemption costs the server, PostgreSQL and
the load driver. Figures, not a test.

With ``--promotions`` it measures what promotion plans cost the same closed loop
instead (no pgbench, no paced run): the two plans of ``bench/promotions.py`` run for the
provider, their targets out of reach (every redemption updates its counters, none is
rewarded: the counting's cost alone), and ``--counters`` counters of as many other
subscribers (a million by default, set-based) are added to the table. Each round runs
the closed loop twice on the same server, back to back, plans running and plans ended
(a redemption as before promotions), the order alternating from round to round; after
each switch the bench waits out the servers' cache of the plans (10 s) and sends a
lead-in. Prints each round's rates, its ratio (plans / no plans), the CPU per redemption
of the server and PostgreSQL, the load average, and the medians.
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUBSCRIBERS = 1000
LEAD_IN = 500  # paced requests before the measured ones
MSISDN_PREFIX = "2547"


def msisdn(index: int) -> str:
    return f"{MSISDN_PREFIX}{index:08d}"


# --- the load driver (runs in its own process) ------------------------------------------


async def _client(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    """One HTTP/1.1 request on a kept-alive connection; the response body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


def _request(host: str, port: int, key: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"POST /api/v1/redemptions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def _figures(latencies: list[float]) -> dict[str, Any]:
    latencies = sorted(latencies)
    return {
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


async def _drive(
    url: str,
    key: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    rate: float | None,
    lead_in: int,
) -> dict[str, Any]:
    """Send ``bodies`` over ``concurrency`` connections: as fast as they answer, or at
    ``rate`` a second. The first ``lead_in`` requests are counted apart."""
    host, port_text = url.removeprefix("http://").split(":")
    port = int(port_text)
    requests = [_request(host, port, key, body) for body in bodies]
    latencies: list[float] = []
    lead_in_latencies: list[float] = []
    codes: dict[int, int] = {}
    next_index = 0
    connections = [await _client(host, port) for _ in range(concurrency)]
    start = time.perf_counter()
    measured_from = start + lead_in / rate if rate else start

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_index
        while next_index < len(requests):
            index = next_index
            next_index += 1
            scheduled = start + index / rate if rate else time.perf_counter()
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            answer = await _exchange(reader, writer, requests[index])
            (latencies if index >= lead_in else lead_in_latencies).append(
                time.perf_counter() - scheduled
            )
            code = json.loads(answer)["result_code"]
            codes[code] = codes.get(code, 0) + 1
        writer.close()

    await asyncio.gather(*(worker(*connection) for connection in connections))
    elapsed = time.perf_counter() - measured_from
    return {
        **_figures(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "codes": codes,
        "lead_in": _figures(lead_in_latencies) if lead_in_latencies else None,
    }


def drive_main(args: argparse.Namespace) -> None:
    bodies = json.loads(Path(args.drive).read_text())
    result = asyncio.run(
        _drive(args.url, args.key, bodies, args.concurrency, args.rate, args.lead_in)
    )
    print(json.dumps(result))


# --- setup ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare(
    admin_url: str,
    workdir: Path,
    vouchers: int,
    pgbench_vouchers: int,
    counters: int | None = None,
) -> dict[str, Any]:
    """The scratch database; with ``counters``, the promotion plans of
    ``bench/promotions.py`` (targets out of reach) and that many counters of other
    subscribers (the answer then keeps the runtime, ``rt``, to end and restart them)."""
    import psycopg
    from sqlalchemy import Integer, func, select
    from tests import factories

    from voms.db import tables as t

    name = "voms_bench"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    keys = workdir / "keys.json"
    rt = factories.new_installation(url, keys)
    factories.standard_catalog(rt)
    with rt.engine.begin() as conn:
        gold = conn.execute(
            select(t.product_types.c.id).where(t.product_types.c.code == "GOLD")
        ).scalar_one()
        conn.execute(
            t.subscribers.insert(),
            [
                {
                    "msisdn": msisdn(i),
                    "service_provider_id": 1,
                    "product_type_id": gold,
                    "state": "active",
                    "created_at": time_now(),
                }
                for i in range(SUBSCRIBERS)
            ],
        )
    print(f"generating {vouchers + pgbench_vouchers} vouchers…", file=sys.stderr)
    http_pins = factories.active_batch(rt, count=vouchers)
    raw = factories.active_batch(rt, count=pgbench_vouchers) if pgbench_vouchers else [("0", "")]
    key = factories.api_key(rt, "channel", name="bench")
    with rt.engine.connect() as conn:
        ids = {
            "balance_type": conn.execute(
                select(t.balance_types.c.id).where(t.balance_types.c.code == "CASH")
            ).scalar_one(),
            "voucher_type": conn.execute(select(t.voucher_types.c.id)).scalar_one(),
            "api_key": conn.execute(select(t.api_keys.c.id)).scalar_one(),
            "first_subscriber": conn.execute(
                select(t.subscribers.c.id).order_by(t.subscribers.c.id)
            ).first()[0],  # type: ignore[index]
        }
        # pgbench computes a subscriber's id from its msisdn's number: check it holds.
        misplaced = conn.execute(
            select(func.count()).where(
                t.subscribers.c.id - ids["first_subscriber"]
                != func.cast(func.substr(t.subscribers.c.msisdn, 5), Integer)
            )
        ).scalar_one()
        if misplaced:
            raise SystemExit("subscriber ids do not follow their msisdns: pgbench would err")
    if counters is not None:
        from bench import promotions

        promotions.create_plans(rt)
        promotions.unreachable(rt)
        print(f"adding {counters:,} counters…", file=sys.stderr)
        seconds = promotions.add_counters(rt, counters)
        print(f"added {counters:,} counters in {seconds:.1f} s", file=sys.stderr)
    else:
        rt.engine.dispose()
    return {
        "rt": rt if counters is not None else None,
        "url": url,
        "keys": str(keys),
        "pins": http_pins,
        "pgbench_first_serial": int(raw[0][0]),
        "key": key,
        "ids": ids,
    }


def time_now() -> Any:
    from voms.db.types import utcnow

    return utcnow()


# The transaction a successful redemption with a request id runs (services/redemption.py),
# statement for statement, with the voucher found by serial (pgbench cannot compute an
# HMAC; both are unique-index lookups on the same table). {pipeline} and {end_pipeline}
# are empty for the one-round-trip-per-statement run; for the pipelined run they send
# what the service sends together in one round trip (voms.db.hot): the BEGIN with the
# first statement, the subscriber's lock with its balances, the writes with the COMMIT.
PGBENCH_SCRIPT = r"""
\set k :k + 1
\set serial :first + :client_id * :per + :k - 1
\set sub random(0, 999)
\set s_id :firstsub + :sub
{pipeline}
BEGIN;
SELECT v.serial, v.state, b.state, b.expires_at, b.voucher_type_id, b.service_provider_id,
  (SELECT failures FROM pin_attempts WHERE msisdn = '2547' || lpad(CAST(:sub AS text), 8, '0')),
  (SELECT blacklisted_until FROM pin_attempts
    WHERE msisdn = '2547' || lpad(CAST(:sub AS text), 8, '0'))
  FROM vouchers v JOIN batches b ON b.id = v.batch_id WHERE v.serial = :serial;
{end_pipeline}
{pipeline}
SELECT id, msisdn, service_provider_id, product_type_id, state, account_expires_at
  FROM subscribers WHERE msisdn = '2547' || lpad(CAST(:sub AS text), 8, '0') FOR UPDATE;
SELECT b.balance_type_id, b.amount, b.expires_at FROM balances b
  JOIN subscribers s ON s.id = b.subscriber_id
  WHERE s.msisdn = '2547' || lpad(CAST(:sub AS text), 8, '0');
{end_pipeline}
UPDATE vouchers SET state = 'redeemed', state_changed_at = now(), redeemed_at = now(),
  redeemed_by = '2547' || lpad(CAST(:sub AS text), 8, '0')
  WHERE serial = :serial AND state = 'available' RETURNING serial;
{pipeline}
INSERT INTO balances (subscriber_id, balance_type_id, amount, expires_at)
  VALUES (:s_id, :bt, 1000, now() + interval '30 days')
  ON CONFLICT (subscriber_id, balance_type_id)
  DO UPDATE SET amount = balances.amount + 1000, expires_at = now() + interval '30 days';
INSERT INTO ledger (at, subscriber_id, balance_type_id, amount, balance_after, cause,
  transaction_id, serial, reason, actor)
  VALUES (now(), :s_id, :bt, 1000, 1000, 'redemption', gen_random_uuid()::text, :serial,
  NULL, 'bench');
UPDATE subscribers SET account_expires_at = now() + interval '60 days' WHERE id = :s_id;
INSERT INTO transactions (id, at, kind, channel, msisdn, recipient_msisdn, serial,
  voucher_type_id, scenario, result_code, credits, reservation_id, service_provider_id,
  api_key_id, actor)
  VALUES (gen_random_uuid()::text, now(), 'redemption', 'rest',
  '2547' || lpad(CAST(:sub AS text), 8, '0'), '2547' || lpad(CAST(:sub AS text), 8, '0'),
  :serial, :vt, 1, 0, '[{"balance_type": "CASH", "amount": 1000, "balance": 1000, '
  '"expires_at": "2027-01-01T00:00:00+00:00"}]',
  NULL, 1, :key, 'bench');
INSERT INTO idempotency_keys (scope, request_id, request_hash, status_code, response, created_at)
  VALUES ('key:' || 'bench', 'pgb-' || CAST(:serial AS text), repeat('a', 64), 200,
  '{"result_code": 0, "result_text": "Success", "serial": "100000000001", '
  '"voucher_type": "TOPUP10", "scenario": 1, "msisdn": "254700000001", '
  '"recipient_msisdn": "254700000001", "credits": [{"balance_type": "CASH", '
  '"amount": 1000, "balance": 1000, "expires_at": "2027-01-01T00:00:00+00:00"}], '
  '"account_expires_at": "2027-01-01T00:00:00+00:00", "product_type": "GOLD", '
  '"rewards": [], "transaction_id": "6f1c2a0e-3c1d-4a51-9c56-0d5f3c0a7e11"}',
  now());
END;
{end_pipeline}
"""


def _pgbench(
    url: str,
    first_serial: int,
    clients: int,
    per_client: int,
    ids: dict[str, int],
    work: Path,
    *,
    pipelined: bool,
    rate: float | None = None,
) -> dict[str, Any]:
    """pgbench's figures; with ``rate``, paced (latency counted from the scheduled
    start, as pgbench does with --rate)."""
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench not found: apt-get install postgresql-client (or -contrib)")
    name = ("pipelined" if pipelined else "plain") + ("-paced" if rate else "")
    script = work / f"redeem-{name}.sql"
    script.write_text(
        PGBENCH_SCRIPT.replace("{pipeline}", r"\startpipeline" if pipelined else "").replace(
            "{end_pipeline}", r"\endpipeline" if pipelined else ""
        )
    )
    for old in work.glob(f"{name}.*"):  # an earlier round's log
        old.unlink()
    command = [
        "pgbench",
        "--no-vacuum",
        "--protocol=prepared",
        f"--client={clients}",
        "--jobs=2",
        f"--transactions={per_client}",
        *([f"--rate={rate}"] if rate else []),
        "-D",
        "k=0",
        "-D",
        f"first={first_serial}",
        "-D",
        f"per={per_client}",
        "-D",
        f"firstsub={ids['first_subscriber']}",
        "-D",
        f"bt={ids['balance_type']}",
        "-D",
        f"vt={ids['voucher_type']}",
        "-D",
        f"key={ids['api_key']}",
        "--log",
        f"--log-prefix={work / name}",
        "-f",
        str(script),
        url.replace("postgresql+psycopg://", "postgresql://"),
    ]
    started = time.perf_counter()
    cpu_before = _postgres_cpu_seconds(), _children_cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, cwd=work, check=False)
    cpu_after = _postgres_cpu_seconds(), _children_cpu_seconds()
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
    latencies: list[float] = []
    for log in work.glob(f"{name}.*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                latencies.append(int(fields[2]) / 1e6)
    latencies.sort()
    tps = next(
        float(line.split("=")[1].split()[0])
        for line in done.stdout.splitlines()
        if line.startswith("tps")
    )
    return {
        "rps": tps,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "seconds": elapsed,
        "requests": len(latencies),
        "cpu_ms": [
            1000 * (b - a) / len(latencies) for a, b in zip(cpu_before, cpu_after, strict=True)
        ],
    }


def _serve(env: dict[str, str], workers: int, port: int) -> subprocess.Popen[bytes]:
    import httpx

    voms = str(Path(sys.executable).with_name("voms"))
    server = subprocess.Popen(
        [voms, "serve", "--workers", str(workers), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    os.killpg(server.pid, signal.SIGTERM)
    raise SystemExit("server did not start")


def _cpu_seconds(pid: int, which: slice = slice(11, 13)) -> float:
    """CPU of a process and its children (the uvicorn workers): user + system by default."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(value) for value in fields[which]) / tick
    return total


def _postgres_cpu_seconds() -> float:
    """User + system CPU of every PostgreSQL server process, ended backends included."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "comm").read_text().strip() != "postgres":
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        # utime, stime, and cutime, cstime: backends that ended count in the postmaster's
        total += sum(int(value) for value in fields[11:15]) / tick
    return total


def _children_cpu_seconds() -> float:
    """CPU of the finished child processes (the load driver, pgbench)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_driver(
    url: str,
    key: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    rate: float | None,
    work: Path,
    lead_in: int = 0,
) -> dict[str, Any]:
    path = work / f"bodies-{rate or 'max'}.json"
    path.write_text(json.dumps(bodies))
    command = [
        sys.executable,
        __file__,
        "--drive",
        str(path),
        "--url",
        url,
        "--key",
        key,
        "--concurrency",
        str(concurrency),
    ]
    if rate:
        command += ["--rate", str(rate), "--lead-in", str(lead_in)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=4, help="VOMS_REDEMPTION_THREADS of each worker"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="16 to 64")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="closed-loop HTTP runs, each followed by its pgbench runs (medians are printed)",
    )
    parser.add_argument(
        "--requests", type=int, default=6000, help="of each closed-loop run and of the paced run"
    )
    parser.add_argument("--pgbench-per-client", type=int, default=250)
    parser.add_argument(
        "--paced-rate",
        type=float,
        help="requests/s of the paced run (default: half the closed loop's median)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--profile",
        help="py-spy the server during the first closed-loop run: collapsed stacks here",
    )
    parser.add_argument(
        "--promotions",
        action="store_true",
        help="each round: the closed loop with promotion plans running and ended, back to back",
    )
    parser.add_argument(
        "--counters",
        type=int,
        default=1_000_000,
        help="with --promotions: counters of other subscribers in the table",
    )
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--lead-in", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive_main(args)
        return

    if args.promotions:
        promotions_main(args)
        return
    work = Path(tempfile.mkdtemp(prefix="voms-bench-"))
    warmup = 500
    paced = args.requests
    total = warmup + args.rounds * args.requests + LEAD_IN + paced
    per_run = args.concurrency * args.pgbench_per_client
    paced_per_client = -(-paced // args.concurrency)
    setup = _prepare(
        args.pg_url,
        work,
        total,
        2 * args.rounds * per_run + args.concurrency * paced_per_client,
    )
    bodies = [
        {"msisdn": msisdn(i % SUBSCRIBERS), "pin": pin, "request_id": f"bench-{serial}"}
        for i, (serial, pin) in enumerate(setup["pins"])
    ]
    server, url = _start(args, setup)
    rounds: list[dict[str, Any]] = []
    next_body = warmup
    next_serial = setup["pgbench_first_serial"]

    def pgbench(pipelined: bool, rate: float | None = None) -> dict[str, Any]:
        nonlocal next_serial
        per_client = paced_per_client if rate else args.pgbench_per_client
        figures = _pgbench(
            setup["url"],
            next_serial,
            args.concurrency,
            per_client,
            setup["ids"],
            work,
            pipelined=pipelined,
            rate=rate,
        )
        next_serial += args.concurrency * per_client
        return figures

    try:
        _run_driver(url, setup["key"], bodies[:warmup], args.concurrency, None, work)
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}…", file=sys.stderr)
            profiler = _profile(server.pid, args.profile) if args.profile and not number else None
            cpu_before = _cpu(server.pid)
            http = _run_driver(
                url,
                setup["key"],
                bodies[next_body : next_body + args.requests],
                args.concurrency,
                None,
                work,
            )
            next_body += args.requests
            http["cpu_ms"] = [
                1000 * (b - a) / http["requests"]
                for a, b in zip(cpu_before, _cpu(server.pid), strict=True)
            ]
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=60)
            rounds.append({"http": http, "raw": pgbench(False), "piped": pgbench(True)})
        rate = args.paced_rate or statistics.median(r["http"]["rps"] for r in rounds) / 2
        half = _run_driver(
            url, setup["key"], bodies[next_body:], args.concurrency, rate, work, LEAD_IN
        )
        half["raw"] = pgbench(True, rate)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    _report(args, rounds, rate, half)
    shutil.rmtree(work, ignore_errors=True)


def _start(args: argparse.Namespace, setup: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    """``voms serve`` on the scratch database: the server and its URL."""
    return serve(setup["url"], setup["keys"], args.workers, args.threads, args.concurrency)


def serve(
    database_url: str, keys_file: str, workers: int, threads: int, concurrency: int
) -> tuple[subprocess.Popen[bytes], str]:
    """``voms serve`` on a database, pooled for ``concurrency`` clients: the server and its
    URL (also bench/scale.py's)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env.update(
        VOMS_DATABASE_URL=database_url,
        VOMS_KEYS_FILE=keys_file,
        VOMS_LOG_LEVEL="WARNING",  # no access log line per request
        VOMS_REDEMPTION_THREADS=str(threads),
        VOMS_DB_POOL_SIZE=str(max(5, concurrency // workers + 2)),
    )
    return _serve(env, workers, port), f"http://127.0.0.1:{port}"


PLANS_CACHE_SECONDS = 10.5  # voms.services.promotions.cache.TTL_SECONDS, and a margin
PROMOTIONS_LEAD_IN = 300  # requests after each switch, not measured


def promotions_main(args: argparse.Namespace) -> None:
    """``--promotions``: the closed loop with plans running against plans ended."""
    from bench import promotions

    work = Path(tempfile.mkdtemp(prefix="voms-bench-"))
    warmup = 500
    per_run = PROMOTIONS_LEAD_IN + args.requests
    setup = _prepare(args.pg_url, work, warmup + 2 * args.rounds * per_run, 0, args.counters)
    rt = setup.pop("rt")
    bodies = [
        {"msisdn": msisdn(i % SUBSCRIBERS), "pin": pin, "request_id": f"bench-{serial}"}
        for i, (serial, pin) in enumerate(setup["pins"])
    ]
    server, url = _start(args, setup)
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    loads: list[tuple[float, float]] = []
    next_body = warmup
    try:
        _run_driver(url, setup["key"], bodies[:warmup], args.concurrency, None, work)
        for number in range(args.rounds):
            order = (True, False) if number % 2 == 0 else (False, True)
            load_before = os.getloadavg()[0]
            shown = []
            for running in order:
                promotions.set_plans_running(rt, running)
                time.sleep(PLANS_CACHE_SECONDS)  # every server process now sees it
                lead_in = bodies[next_body : next_body + PROMOTIONS_LEAD_IN]
                _run_driver(url, setup["key"], lead_in, args.concurrency, None, work)
                measured = bodies[next_body + PROMOTIONS_LEAD_IN : next_body + per_run]
                next_body += per_run
                cpu_before = _cpu(server.pid)
                http = _run_driver(url, setup["key"], measured, args.concurrency, None, work)
                http["cpu_ms"] = [
                    1000 * (b - a) / http["requests"]
                    for a, b in zip(cpu_before, _cpu(server.pid), strict=True)
                ]
                runs[running].append(http)
                shown.append(
                    f"{'plans' if running else 'no plans'} {http['rps']:.0f}/s"
                    f" (server {http['cpu_ms'][0]:.2f} ms, PostgreSQL {http['cpu_ms'][1]:.2f} ms)"
                )
            loads.append((load_before, os.getloadavg()[0]))
            ratio = runs[True][-1]["rps"] / runs[False][-1]["rps"]
            print(
                f"round {number + 1}: {'; '.join(shown)}; ratio {ratio:.3f};"
                f" load {loads[-1][0]:.1f}-{loads[-1][1]:.1f}",
                flush=True,
            )
        counted = _counted(rt)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        rt.engine.dispose()
    _report_promotions(args, runs, loads)
    made = warmup + args.rounds * per_run  # with the plans running
    print(
        f"counted: {counted:,} in the redeeming subscribers' counters, for {made:,}"
        f" redemptions made while the {len(promotions.PLANS)} plans ran"
    )
    shutil.rmtree(work, ignore_errors=True)


def _counted(rt: Any) -> int:
    """The sum of the counters of the subscribers who redeem (a check that they count)."""
    from sqlalchemy import text

    with rt.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT coalesce(sum(c.value), 0) FROM promotion_counters c"
                    " JOIN subscribers s ON s.id = c.subscriber_id WHERE s.msisdn LIKE :prefix"
                ),
                {"prefix": MSISDN_PREFIX + "%"},
            ).scalar_one()
        )


def _report_promotions(
    args: argparse.Namespace,
    runs: dict[bool, list[dict[str, Any]]],
    loads: list[tuple[float, float]],
) -> None:
    med = statistics.median
    ratios = [a["rps"] / b["rps"] for a, b in zip(runs[True], runs[False], strict=True)]
    print(
        f"\nPostgreSQL, {args.workers} worker(s) of {args.threads} redemption threads,"
        f" concurrency {args.concurrency}, {os.cpu_count()} CPUs; {args.counters:,} counters of"
        f" other subscribers; {len(ratios)} rounds of {args.requests} redemptions each way,"
        " back to back, the order alternating"
    )
    for running in (True, False):
        figures = runs[running]
        print(
            f"{'plans running (targets out of reach)' if running else 'plans ended':<40}"
            f" {med(r['rps'] for r in figures):7.0f} redemptions/s (median),"
            f" p50 {med(r['p50_ms'] for r in figures):.2f} ms,"
            f" p99 {med(r['p99_ms'] for r in figures):.2f} ms,"
            f" CPU per redemption: server {med(r['cpu_ms'][0] for r in figures):.2f} ms,"
            f" PostgreSQL {med(r['cpu_ms'][1] for r in figures):.2f} ms"
        )
    print(
        f"ratio plans / no plans: median {med(ratios):.3f} (rounds "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + f"); load average {min(min(x) for x in loads):.1f}-{max(max(x) for x in loads):.1f}"
    )
    bad: dict[str, int] = {}
    for figures in runs[True] + runs[False]:
        for code, n in figures["codes"].items():
            if code != "0":
                bad[code] = bad.get(code, 0) + n
    if bad:
        print(f"non-zero result codes: {bad}")


def _profile(pid: int, output: str) -> subprocess.Popen[bytes]:
    profiler = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--gil",
            "--format",
            "raw",
            "--output",
            output,
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(1)
    return profiler


def _cpu(server_pid: int) -> tuple[float, float, float, float]:
    """CPU seconds so far: the server, PostgreSQL, the load driver, the server's kernel."""
    return (
        _cpu_seconds(server_pid),
        _postgres_cpu_seconds(),
        _children_cpu_seconds(),
        _cpu_seconds(server_pid, slice(12, 13)),
    )


def _report(
    args: argparse.Namespace, rounds: list[dict[str, Any]], rate: float, half: dict[str, Any]
) -> None:
    def median(run: str, key: str, index: int | None = None) -> float:
        values = [r[run][key] if index is None else r[run][key][index] for r in rounds]
        return statistics.median(values)

    print(
        f"\nPostgreSQL, {args.workers} worker(s) of {args.threads} redemption threads, "
        f"concurrency {args.concurrency}, {os.cpu_count()} CPUs; {len(rounds)} rounds of"
        " HTTP then pgbench, back to back"
    )
    print(f"{'round':<7}{'HTTP req/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'pgbench':>9}", end="")
    print(f"{'pipelined':>10}{'ratio':>7}{'ratio pipelined':>17}")
    for number, r in enumerate(rounds, 1):
        http, raw, piped = r["http"], r["raw"], r["piped"]
        print(
            f"{number:<7}{http['rps']:>11.0f}{http['p50_ms']:>8.2f}{http['p99_ms']:>8.2f}"
            f"{raw['rps']:>9.0f}{piped['rps']:>10.0f}{http['rps'] / raw['rps']:>7.0%}"
            f"{http['rps'] / piped['rps']:>17.0%}"
        )
    ratios = [r["http"]["rps"] / r["raw"]["rps"] for r in rounds]
    print(f"\n{'run (median of the rounds)':<40}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, run in (
        ("HTTP redemptions, closed loop", "http"),
        ("pgbench, same SQL, a round trip each", "raw"),
        ("pgbench, pipelined as the service", "piped"),
    ):
        print(
            f"{name:<40}{median(run, 'rps'):>9.0f}{median(run, 'p50_ms'):>9.2f}"
            f"{median(run, 'p99_ms'):>9.2f}"
        )
    print(
        f"{f'HTTP redemptions, paced {rate:.0f}/s':<40}{half['rps']:>9.0f}"
        f"{half['p50_ms']:>9.2f}{half['p99_ms']:>9.2f}   ({half['requests']} requests)"
    )
    lead_in = half["lead_in"]
    print(
        f"{'  its lead-in, the server cold':<40}{'':>9}{lead_in['p50_ms']:>9.2f}"
        f"{lead_in['p99_ms']:>9.2f}   ({lead_in['requests']} requests before those)"
    )
    raw = half["raw"]
    print(
        f"{f'pgbench, pipelined, paced {rate:.0f}/s':<40}{raw['rps']:>9.0f}"
        f"{raw['p50_ms']:>9.2f}{raw['p99_ms']:>9.2f}   (the host's own tail, for comparison)"
    )
    print(
        f"ratio HTTP / raw SQL: {statistics.median(ratios):.0%} (median; rounds"
        f" {min(ratios):.0%} to {max(ratios):.0%}); pipelined as the service: "
        f"{statistics.median(r['http']['rps'] / r['piped']['rps'] for r in rounds):.0%}"
    )
    print(
        f"CPU per redemption over HTTP: server {median('http', 'cpu_ms', 0):.2f} ms (in the"
        f" kernel {median('http', 'cpu_ms', 3):.2f}), PostgreSQL"
        f" {median('http', 'cpu_ms', 1):.2f} ms, load driver {median('http', 'cpu_ms', 2):.2f} ms"
    )
    for name, run in (("a round trip each", "raw"), ("pipelined", "piped")):
        print(
            f"CPU per pgbench transaction, {name}: PostgreSQL {median(run, 'cpu_ms', 0):.2f} ms,"
            f" pgbench {median(run, 'cpu_ms', 1):.2f} ms"
        )
    codes: dict[str, int] = {}
    for figures in [r["http"] for r in rounds] + [half]:
        for code, n in figures["codes"].items():
            codes[code] = codes.get(code, 0) + n
    bad = {code: n for code, n in codes.items() if code != "0"}
    if bad:
        print(f"non-zero result codes: {bad}")


if __name__ == "__main__":
    main()
