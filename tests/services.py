"""Real services on loopback, started by the test session and by the benchmarks alike: a free
port, a PostgreSQL server from the Debian binaries, a Ray cluster. (No pytest here: the
benchmarks import it.)"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl)."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run does)")
    return found[-1].parent


@contextmanager
def postgres_cluster(durable: bool = False) -> Iterator[str]:
    """A PostgreSQL server on loopback in a new folder; its URL without a database.
    ``durable``: with the server's own durability settings (benchmarks); otherwise fsync,
    synchronous commits and full-page writes are off (tests, which only need it to be correct)."""
    bindir = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="labelblocks-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    fast = [] if durable else ["--no-sync"]
    settings = "" if durable else " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(folder / "db"), "-A", "trust", "-U", "postgres",
                    *fast], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(folder / "db"), "-l", str(folder / "log"), "-w",
                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1{settings}", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(folder / "db"), "-m",
                        "fast" if durable else "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def ray_cluster(node_cpus: list[int], env: dict[str, str], object_store_mb: int | None = None) -> Iterator[str]:
    """A Ray cluster on loopback, started with `ray start`: a head and one more node per
    further entry of ``node_cpus`` (each entry a node's CPUs); its address. ``env`` is added
    to the nodes' environment, which their workers inherit (PYTHONPATH for blocks to import)."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env}
    ray_bin = str(Path(sys.executable).parent / "ray")
    store = ["--object-store-memory", str(object_store_mb * 1024 * 1024)] if object_store_mb else []
    address = f"127.0.0.1:{port}"
    try:
        for i, cpus in enumerate(node_cpus):
            where = ["--head", "--port", str(port), "--include-dashboard", "false"] if i == 0 else ["--address", address]
            subprocess.run([ray_bin, "start", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
                            *store, "--disable-usage-stats"], check=True, env=env, capture_output=True)
        yield address
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, check=False)
