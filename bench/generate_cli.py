"""`voms batch generate` as a user runs it, against a plain COPY of the very same rows.

    .venv/bin/python bench/generate_cli.py [--count 1000000] [--rounds 3] [--profile DIR]

Each round, in a fresh PostgreSQL database (``voms_bench_gencli`` next to
VOMS_TEST_POSTGRES_URL's, migrated, with the tests' catalog):

1. times the whole command, ``voms batch generate --type TOPUP10 --count N`` in its own
   process (interpreter start, imports, batch, crypto workers, every chunk, the end);
2. dumps the vouchers it wrote (``COPY … TO STDOUT``, binary, not timed) and makes a clone of
   ``vouchers`` (``CREATE TABLE … (LIKE vouchers INCLUDING ALL)`` and its storage
   parameters) with a foreign key from ``batch_id`` to ``batches``, as ``vouchers`` had
   before migration 0007_vouchers_fk;
3. times a plain ``COPY`` of that dump into the clone from this process, one
   transaction, in 1 MiB writes;
4. the same into a second clone without the foreign key (``LIKE`` copies none), like
   ``vouchers`` now (the floor: the database's own work on the same rows; the target):
   the per-row check of ``batch_id`` is most of the difference between the two.

A CHECKPOINT runs before each timed step, so neither pays for the other's writes. Prints
each round (with the CPU time the command and its crypto workers used: on a busy host,
where the database is slow, the wall-clock ratio nears 1 whatever the command costs) and
the median ratio. With ``--profile``, the command runs under py-spy
(``--subprocesses``) and its flame graphs land in DIR (that round's time is then not
representative). Figures, not a test.
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = "voms_bench_gencli"
COLUMNS = "serial, batch_id, pin_hash, lookup_key_id, pin_ciphertext, encryption_key_id, state"


def _fresh(admin_url: str, keys: Path) -> str:
    from tests import factories

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{DB_NAME}"
    if keys.exists():
        keys.unlink()
    rt = factories.new_installation(url, keys)
    factories.standard_catalog(rt)
    rt.engine.dispose()
    return url


def _checkpoint(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _generate(url: str, keys: Path, count: int, profile: Path | None) -> tuple[float, float]:
    """Wall seconds of the whole command, and the CPU seconds it (with its workers) used."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env.update(VOMS_DATABASE_URL=url, VOMS_KEYS_FILE=str(keys), VOMS_LOG_LEVEL="WARNING")
    command = [
        str(Path(sys.executable).with_name("voms")),
        "batch",
        "generate",
        "--type",
        "TOPUP10",
        "--count",
        str(count),
    ]
    if profile is not None:
        command = [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--subprocesses",
            "--rate",
            "250",
            "--format",
            "speedscope",
            "--output",
            str(profile),
            "--",
            *command,
        ]
    cpu = _children_cpu()
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"voms batch generate failed:\n{done.stdout}\n{done.stderr}")
    return seconds, _children_cpu() - cpu


def _dump(url: str, dump: Path) -> None:
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.cursor() as cursor,
        cursor.copy(f"COPY vouchers ({COLUMNS}) TO STDOUT (FORMAT binary)") as copy,
        dump.open("wb") as target,
    ):
        for block in copy:
            target.write(block)


def _copy(url: str, dump: Path, clone: str, *, foreign_key: bool) -> float:
    """Seconds of one COPY of the dump into a new clone of ``vouchers``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {clone} (LIKE vouchers INCLUDING ALL)")
        if foreign_key:  # LIKE copies no foreign key
            conn.execute(f"ALTER TABLE {clone} ADD FOREIGN KEY (batch_id) REFERENCES batches (id)")
        (options,) = conn.execute(  # storage parameters (fillfactor): LIKE leaves them out
            "SELECT reloptions FROM pg_class WHERE oid = 'vouchers'::regclass"
        ).fetchone() or (None,)
        if options:
            conn.execute(f"ALTER TABLE {clone} SET ({', '.join(options)})")
        conn.execute("CHECKPOINT")
    with psycopg.connect(url) as conn:
        began = time.perf_counter()
        with (
            conn.cursor() as cursor,
            cursor.copy(f"COPY {clone} ({COLUMNS}) FROM STDIN (FORMAT binary)") as copy,
            dump.open("rb") as source,
        ):
            while block := source.read(1 << 20):
                copy.write(block)
        conn.commit()
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="py-spy the first round's command here")
    args = parser.parse_args()
    admin_url = os.environ.get(
        "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}; {args.count:,} vouchers", flush=True)
    work = Path(tempfile.mkdtemp(prefix="voms-gencli-"))
    ratios: list[float] = []
    bare_ratios: list[float] = []
    try:
        for number in range(1, args.rounds + 1):
            url = _fresh(admin_url, work / "keys.json")
            _checkpoint(url)
            profile = None
            if args.profile is not None and number == 1:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile = args.profile / "generate.speedscope.json"
            generate_s, generate_cpu = _generate(url, work / "keys.json", args.count, profile)
            _dump(url, work / "vouchers.bin")
            copy_s = _copy(url, work / "vouchers.bin", "clone_fk", foreign_key=True)
            bare_s = _copy(url, work / "vouchers.bin", "clone_bare", foreign_key=False)
            (work / "vouchers.bin").unlink()
            ratios.append(generate_s / copy_s)
            bare_ratios.append(generate_s / bare_s)
            print(
                f"round {number}: voms batch generate {generate_s:6.2f} s (CPU of the command "
                f"and its workers {generate_cpu:5.2f} s); COPY of the same rows into a clone "
                f"{copy_s:6.2f} s, ratio {generate_s / copy_s:.2f}; into a clone without the "
                f"foreign key {bare_s:6.2f} s, ratio {generate_s / bare_s:.2f}"
                + (" (profiled)" if profile else ""),
                flush=True,
            )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)
    for name, values in (("clone", ratios), ("clone without the foreign key", bare_ratios)):
        each = ", ".join(f"{r:.2f}" for r in values)
        print(f"median ratio to the {name}: {statistics.median(values):.2f} (rounds {each})")


if __name__ == "__main__":
    main()
