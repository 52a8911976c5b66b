"""Real high-availability set-ups for the tests: etcd, three PostgreSQL instances under
Patroni with synchronous replication, TCP proxies to cut a node off, PgBouncer.

Everything runs from Debian's packages (postgresql, patroni, etcd-server, pgbouncer) on
local ports 5540-5589 and in directories /tmp/voms-ha-*, apart from the PostgreSQL on
5432 the rest of the suite uses. As root, the packages are installed when missing and
PostgreSQL (under Patroni) runs as the ``postgres`` user; otherwise the tests skip when
a package is missing, unless VOMS_TEST_REQUIRE_HA=1 (CI) makes that a failure.
"""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

PACKAGES = {"patroni": "patroni", "etcd": "etcd-server", "pgbouncer": "pgbouncer"}
REQUIRE_HA = os.environ.get("VOMS_TEST_REQUIRE_HA") == "1"
PROXY = str(Path(__file__).with_name("tcp_proxy.py"))
BASE_PORT = 5540
SCOPE = "voms-ha"
DATABASE = "voms"


def _pg_bin_dir() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=_version)
    return versions[-1].parent if versions else None


def _version(path: Path) -> int:
    try:
        return int(path.parent.parent.name)
    except ValueError:
        return 0


def _missing() -> list[str]:
    missing = [package for command, package in PACKAGES.items() if shutil.which(command) is None]
    if _pg_bin_dir() is None:
        missing.append("postgresql")
    return missing


def require_packages() -> Path:
    """PostgreSQL's bin directory, once the packages are there (installed as root)."""
    missing = _missing()
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", *missing],
            env=env,
            check=False,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
        missing = _missing()
    if missing:
        reason = f"HA tests need the Debian packages {', '.join(missing)} (install as root)"
        if REQUIRE_HA:
            pytest.fail(reason)
        pytest.skip(reason)
    bin_dir = _pg_bin_dir()
    assert bin_dir is not None
    return bin_dir


def _as_postgres() -> dict[str, Any]:
    """Popen arguments that run a PostgreSQL tool as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres"}


def _workdir(name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"voms-ha-{name}-", dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)
    return path


def wait_until(what: str, check: Any, timeout_s: float, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Proxy:
    """A TCP proxy process from ``listen`` to ``target``; stop() is the network cut."""

    def __init__(self, listen: int, target: int, log: Path) -> None:
        self.listen, self.target, self.log = listen, target, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, PROXY, str(self.listen), str(self.target)],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        wait_until(f"the proxy on {self.listen}", lambda: _port_open(self.listen), 10, 0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # every connection through it ends at once
            self.process.wait(10)
        self.process = None


@dataclass
class Node:
    name: str
    pg_port: int  # the instance itself
    proxy_port: int  # what clients and the other nodes connect to
    etcd_proxy_port: int  # how this node's Patroni reaches etcd
    api_port: int  # Patroni's REST API
    directory: Path
    proxies: list[Proxy] = field(default_factory=list)
    patroni: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection to the instance itself (not through the proxy)."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.pg_port,
            user="postgres",
            dbname=kwargs.pop("dbname", "postgres"),
            connect_timeout=2,
            autocommit=True,
            **kwargs,
        )

    def is_primary(self) -> bool | None:
        """True on the primary, False on a standby, None when it does not answer."""
        try:
            with self.connect() as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                return row is not None and not row[0]
        except psycopg.Error:
            return None

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def cut(self) -> None:
        """Off the network: its PostgreSQL port and its way to etcd are closed."""
        for proxy in self.proxies:
            proxy.stop()


class PatroniCluster:
    """etcd and three PostgreSQL instances under Patroni, synchronous replication on.

    Clients (and the standbys' replication) reach each instance through its TCP proxy;
    each Patroni reaches etcd through a proxy of its own, so that :meth:`Node.cut`
    partitions a node away completely, as a network failure would.
    """

    def __init__(self, bin_dir: Path, base_port: int = BASE_PORT) -> None:
        self.bin_dir = bin_dir
        self.directory = _workdir("patroni")
        self.etcd_port = base_port
        self.etcd: subprocess.Popen[bytes] | None = None
        self.nodes = [
            Node(
                name=f"node{i}",
                pg_port=base_port + 2 + i,
                proxy_port=base_port + 5 + i,
                etcd_proxy_port=base_port + 8 + i,
                api_port=base_port + 11 + i,
                directory=self.directory / f"node{i}",
            )
            for i in range(3)
        ]

    # --- the URL OpenVoMS uses -------------------------------------------------------------

    def url(self, database: str = DATABASE) -> str:
        hosts = "&".join(f"host=127.0.0.1:{node.proxy_port}" for node in self.nodes)
        return f"postgresql://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    # --- start and stop ----------------------------------------------------------------------

    def start(self) -> None:
        for port in range(self.etcd_port, self.etcd_port + 14):
            if _port_open(port):
                pytest.fail(f"port {port} is taken: another HA test run, or a left-over?")
        self._start_etcd()
        for node in self.nodes:
            node.directory.mkdir()
            if os.geteuid() == 0:
                shutil.chown(node.directory, "postgres", "postgres")
            node.directory.chmod(0o700)
            node.proxies = [
                Proxy(node.proxy_port, node.pg_port, self.directory / f"{node.name}-pg-proxy.log"),
                Proxy(
                    node.etcd_proxy_port,
                    self.etcd_port,
                    self.directory / f"{node.name}-etcd-proxy.log",
                ),
            ]
            for proxy in node.proxies:
                proxy.start()
        self._start_patroni(self.nodes[0])
        first = self.nodes[0]
        wait_until("the first node to become primary", first.is_primary, 90)
        for node in self.nodes[1:]:
            self._start_patroni(node)
        wait_until("two streaming standbys, one synchronous", self._replicating, 120, 0.5)
        with first.connect() as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def _start_etcd(self) -> None:
        data = self.directory / "etcd"
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_port + 1}"
        with (self.directory / "etcd.log").open("wb") as sink:
            self.etcd = subprocess.Popen(
                [
                    "etcd",
                    "--name=voms-ha",
                    f"--data-dir={data}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=voms-ha={peer}",
                    "--initial-cluster-state=new",
                    "--unsafe-no-fsync",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            try:
                return httpx.get(f"{client}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until("etcd", healthy, 30)

    def _start_patroni(self, node: Node) -> None:
        config = node.directory / "patroni.yml"
        config.write_text(self._config(node))
        if os.geteuid() == 0:
            shutil.chown(config, "postgres", "postgres")
        with (self.directory / f"{node.name}-patroni.log").open("wb") as sink:
            node.patroni = subprocess.Popen(
                ["patroni", str(config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", ""), "HOME": str(node.directory)},
                start_new_session=True,
                **_as_postgres(),
            )

    def _config(self, node: Node) -> str:
        # JSON is YAML: no YAML library needed here.
        import json

        config = {
            "scope": SCOPE,
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            # use_proxies: Patroni talks to the address given (the node's proxy) only,
            # never to the members etcd lists.
            "etcd3": {"hosts": [f"127.0.0.1:{node.etcd_proxy_port}"], "use_proxies": True},
            "bootstrap": {
                "dcs": {
                    "ttl": 10,
                    "loop_wait": 1,
                    "retry_timeout": 3,
                    "maximum_lag_on_failover": 1048576,
                    # A primary whose PostgreSQL dies is failed over at once, not restarted.
                    "master_start_timeout": 0,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_log_hints": "on",
                            "max_connections": 100,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "64MB",
                            "hot_standby": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.proxy_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(self.bin_dir),
                "pgpass": str(node.directory / "pgpass"),
                "use_unix_socket": True,
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "replicator", "password": "replicator"},
                },
                "parameters": {
                    "unix_socket_directories": str(node.directory),
                    "shared_buffers": "32MB",
                    "log_min_messages": "warning",
                },
                "pg_hba": [
                    "local all all trust",
                    "local replication all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
            },
        }
        return json.dumps(config, indent=2)

    def _replicating(self) -> bool:
        primary = self.primary()
        if primary is None:
            return False
        try:
            with primary.connect() as conn:
                states = [
                    row[0]
                    for row in conn.execute(
                        "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'"
                    )
                ]
        except psycopg.Error:
            return False
        return len(states) == 2 and "sync" in states

    def stop(self) -> None:
        for node in self.nodes:
            if node.patroni is not None and node.patroni.poll() is None:
                node.patroni.terminate()  # Patroni stops its PostgreSQL
        for node in self.nodes:
            if node.patroni is not None:
                try:
                    node.patroni.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(node.patroni.pid, signal.SIGKILL)
                    node.patroni.wait(10)
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(node.postmaster_pid(), signal.SIGKILL)  # (a demoted one, say)
            for proxy in node.proxies:
                proxy.stop()
        if self.etcd is not None:
            self.etcd.kill()
            self.etcd.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def logs(self) -> str:
        """The tail of every log, for an assertion message."""
        parts = []
        for path in sorted(self.directory.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def maintenance(self, on: bool) -> None:
        """Patroni's pause: it neither fails over nor touches the instances (it would
        resume a standby's paused WAL replay otherwise)."""
        answer = httpx.patch(
            f"http://127.0.0.1:{self.nodes[0].api_port}/config", json={"pause": on}, timeout=10
        )
        answer.raise_for_status()
        time.sleep(3)  # every Patroni has run its loop (loop_wait 1 s) and seen it

    # --- who is who --------------------------------------------------------------------------

    def primary(self) -> Node | None:
        for node in self.nodes:
            if node.is_primary():
                return node
        return None

    def standbys(self) -> list[Node]:
        return [node for node in self.nodes if node.is_primary() is False]


@contextlib.contextmanager
def patroni_cluster() -> Iterator[PatroniCluster]:
    cluster = PatroniCluster(require_packages())
    try:
        cluster.start()
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


class PgBouncer:
    """PgBouncer in transaction mode in front of one PostgreSQL, few server connections."""

    def __init__(self, target_host: str, target_port: int, port: int, pool_size: int = 2) -> None:
        require_packages()
        self.port = port
        self.directory = _workdir("pgbouncer")
        self.process: subprocess.Popen[bytes] | None = None
        config = self.directory / "pgbouncer.ini"
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        config.write_text(
            "[databases]\n"
            f"* = host={target_host} port={target_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            f"unix_socket_dir = {self.directory}\n"
            "auth_type = trust\n"
            f"auth_file = {self.directory / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 200\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\n"
            f"pidfile = {self.directory / 'pgbouncer.pid'}\n"
        )
        if os.geteuid() == 0:
            for path in self.directory.iterdir():
                shutil.chown(path, "postgres", "postgres")
        self.config = config

    def start(self) -> None:
        if _port_open(self.port):
            pytest.fail(f"port {self.port} is taken")
        self.process = subprocess.Popen(
            ["pgbouncer", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            **_as_postgres(),
        )
        wait_until("pgbouncer", lambda: _port_open(self.port), 15, 0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)
