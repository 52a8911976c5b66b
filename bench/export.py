"""Export benchmark: N vouchers to a partner's OpenPGP key through `voms export`.

For each database: a fresh, migrated database with a batch of N and a batch of N/10
generated vouchers (not timed) and a partner whose key is made by the gpg command line.
Then `voms export` runs as its own process, as an operator would run it: the N/10 batch,
the N batch, the N batch again (--reissue), and again as XLSX. Prints wall seconds and
the export process's peak RSS (VmHWM, sampled until it exits) for each, so constant
memory shows as equal RSS for N/10 and N. With --verify the N-voucher CSV is decrypted
with gpg and its lines counted.

    .venv/bin/python bench/export.py [--count 1000000] [--databases sqlite,postgresql]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres] [--no-xlsx] [--verify]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from voms.runtime import build_runtime
from voms.services import distribution, generation
from voms.services.auth import CONSOLE

# The tests' catalog factories build the bench's catalog.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOMS = str(Path(sys.executable).with_name("voms"))


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback",
         "--passphrase", "", *args],
        input=data,
        capture_output=True,
        check=True,
        timeout=600,
    )  # fmt: skip
    return done.stdout


def _partner_key(home: Path) -> str:
    home.mkdir(mode=0o700)
    _gpg(home, "--quick-gen-key", "Bench Print <bench@print.example>", "future-default")
    return _gpg(home, "--armor", "--export", "bench@print.example").decode()


def _high_water_mb(pid: int) -> float | None:
    """The process's peak RSS so far (VmHWM: counted since its exec, unlike ru_maxrss,
    which a child inherits from the large parent it was forked from)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _export(env: dict[str, str], output: Path, *args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `voms export` process."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [VOMS, "export", "--partner", "bench", "--output", str(output), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, _high_water_mb(process.pid) or 0.0)
        time.sleep(0.02)
    seconds = time.perf_counter() - began
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"voms export failed: {stderr}")
    return seconds, peak


def _database(kind: str, folder: Path, pg_url: str) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'bench.db'}", None
    name = f"voms_bench_export_{os.getpid()}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url.rsplit("/", 1)[0] + f"/{name}", name


def run(kind: str, count: int, pg_url: str, xlsx: bool, verify: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="voms-bench-") as tmp:
        folder = Path(tmp)
        url, pg_name = _database(kind, folder, pg_url)
        home = folder / "gnupg"
        try:
            from tests import factories

            keys = folder / "keys.json"
            setup = factories.new_installation(url, keys)
            factories.standard_catalog(setup)
            setup.engine.dispose()
            rt = build_runtime(setup.settings)
            began = time.perf_counter()
            small = generation.generate_batch(
                rt, CONSOLE, voucher_type="TOPUP10", count=max(1, count // 10)
            )
            batch = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=count)
            print(
                f"{kind:10} setup: {small['count'] + batch['count']:,} vouchers generated in "
                f"{time.perf_counter() - began:.1f} s (not part of the figures)",
                flush=True,
            )
            distribution.create_partner(
                rt,
                CONSOLE,
                distribution.PartnerIn(name="bench", public_key=_partner_key(home)),
            )
            rt.engine.dispose()
            env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
            env.update(VOMS_DATABASE_URL=url, VOMS_KEYS_FILE=str(keys), TMPDIR=str(folder))
            big = ["--batch", str(batch["batch_id"])]
            runs = [
                (f"{small['count']:,} csv", ["--batch", str(small["batch_id"])]),
                (f"{count:,} csv", big),
                (f"{count:,} csv reissue", [*big, "--reissue"]),
            ]
            if xlsx:
                runs.append((f"{count:,} xlsx reissue", [*big, "--reissue", "--format", "xlsx"]))
            for index, (label, args) in enumerate(runs):
                output = folder / f"export-{index}.gpg"
                seconds, rss = _export(env, output, *args)
                size = output.stat().st_size / 1e6
                print(
                    f"{kind:10} export {label:>22}: {seconds:6.2f} s, peak RSS {rss:5.0f} MB, "
                    f"file {size:.1f} MB",
                    flush=True,
                )
            if verify:
                lines = _gpg(home, "--decrypt", str(folder / "export-1.gpg")).count(b"\n")
                print(f"{kind:10} verified: gpg decrypts {lines - 1:,} voucher lines", flush=True)
        finally:
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                capture_output=True,
                check=False,
            )
            if pg_name is not None:
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--no-xlsx", action="store_true", help="skip the XLSX export")
    parser.add_argument("--verify", action="store_true", help="decrypt the CSV and count")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}", flush=True)
    for kind in args.databases.split(","):
        run(kind.strip(), args.count, args.postgres_url, not args.no_xlsx, args.verify)


if __name__ == "__main__":
    main()
