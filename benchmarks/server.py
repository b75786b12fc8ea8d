"""HTTP API benchmark, with a load generator on loopback.

1. List samples: `labelblocks serve` (its own process) on a project of N samples (default
   100,000); wrk with 50 connections asks for filtered pages (two metadata keys, 50 samples,
   rotating over 20 filter values) for --seconds. Printed: requests/s, p50/p99 latency,
   errors. The floor: the same pages read straight from the store in one loop in this
   process (the page and its total count, as the API answers). Target: the API's cost per
   page (1 / requests per second) at most 3x the direct read, and zero errors.
2. Ingestion: 5,000 small PNGs posted one per request by 20 concurrent clients (a separate
   process) to /api/training/files. Printed: files/s, errors; then every file is checked to
   be in the project exactly once (by content hash). Reference: `labelblocks upload` of the
   same folder. Target: zero errors, nothing lost.

Needs wrk (Debian package `wrk`). Usage:
  python benchmarks/server.py [--samples 100000] [--connections 50] [--seconds 15] [--files 5000] [--clients 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
from store import DEVICES, SITES, cli_upload, make_pngs, seed

from labelblocks.filters import MetadataCondition, SampleFilter
from labelblocks.project import init_project, open_store
from labelblocks.store.keys import create_key

PAGE = 50


def _filters(i: int) -> tuple[str, SampleFilter]:
    site, device = SITES[i % 20], DEVICES[(i * 3) % 10]
    md = json.dumps([{"key": "site", "op": "eq", "values": [site]}, {"key": "device", "op": "eq", "values": [device]}],
                    separators=(",", ":"))
    path = f"/v1/api/1/raw-data?limit={PAGE}&offset=0&includeDisabled=enabled&metadata={requests.utils.quote(md)}"
    f = SampleFilter(metadata=[MetadataCondition(key="site", values=[site]), MetadataCondition(key="device", values=[device])],
                     include_disabled=False)
    return path, f


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """`labelblocks serve` in its own process."""

    def __init__(self, project: Path, extra: list[str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "labelblocks", "--project", str(project), "serve", "--port", str(self.port),
               *(extra or [])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                requests.get(self.url + "/healthz", timeout=2)
                return
            except requests.ConnectionError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("labelblocks serve did not start") from None
                time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def direct_pages(project: Path, seconds: float) -> float:
    """Seconds per page (page + total count) read straight from the store."""
    with open_store(project) as store:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            _, f = _filters(n)
            store.list_samples(f, limit=PAGE, offset=0, descending=True)
            store.count(f)
            n += 1
        return (time.perf_counter() - t0) / n


WRK_SCRIPT = """
paths = {%s}
n = 0
wrk.headers["x-api-key"] = "%s"
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n %% #paths) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%f\\n", summary.requests, summary.errors.connect,
    summary.errors.read + summary.errors.write + summary.errors.timeout, summary.errors.status,
    latency:percentile(50), latency:percentile(99), summary.duration / 1e6))
end
"""


def wrk_list(url: str, key: str, connections: int, seconds: int, work: Path) -> dict[str, float]:
    script = work / "list.lua"
    paths = ", ".join(json.dumps(_filters(i)[0]) for i in range(20))
    script.write_text(WRK_SCRIPT % (paths, key))
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) ([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    reqs, e_conn, e_io, e_status, p50, p99, dur = m.groups()
    return {"requests": int(reqs), "errors": int(e_conn) + int(e_io) + int(e_status), "p50_ms": int(p50) / 1000,
            "p99_ms": int(p99) / 1000, "rps": int(reqs) / float(dur)}


INGEST_CLIENTS = r"""
import concurrent.futures, json, sys, time, pathlib, requests
url, key, folder, clients = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), int(sys.argv[4])
files = sorted(folder.iterdir())
sessions = {}
def post(p):
    import threading
    s = sessions.setdefault(threading.get_ident(), requests.Session())
    r = s.post(url + "/api/training/files", headers={"x-api-key": key},
               files=[("data", (p.name, p.read_bytes(), "image/png"))], timeout=120)
    body = r.json()
    return r.status_code == 200 and body["files"][0]["success"]
t = time.perf_counter()
with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    ok = list(pool.map(post, files))
print(json.dumps({"seconds": time.perf_counter() - t, "ok": sum(ok), "errors": len(ok) - sum(ok)}))
"""


def ingest(project: Path, src: Path, clients: int) -> dict[str, float]:
    with open_store(project) as store:
        _, key = create_key(store, "bench")
    srv = Served(project)
    try:
        out = subprocess.run([sys.executable, "-c", INGEST_CLIENTS, srv.url, key, str(src), str(clients)],
                             capture_output=True, text=True, check=True).stdout
    finally:
        srv.close()
    result: dict[str, float] = json.loads(out)
    wanted = {hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    with open_store(project) as store:
        rows = store.scan(SampleFilter(), "content_hash")
    got = [h for _, h in rows]
    result["stored"] = len(got)
    result["lost"] = len(wanted - set(got))
    result["duplicated"] = len(got) - len(set(got))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed for the load: apt-get install wrk")
    work = args.work or Path(tempfile.mkdtemp(prefix="lb-bench-server-"))
    try:
        project = init_project(work / "list")
        t = time.perf_counter()
        seed(project, args.samples)
        with open_store(project) as store:
            _, key = create_key(store, "bench")
        print(f"seeded {args.samples} samples in {time.perf_counter() - t:.1f} s", flush=True)
        floor = direct_pages(project, 5)
        srv = Served(project)
        try:
            got = requests.get(srv.url + _filters(0)[0], headers={"x-api-key": key}, timeout=30).json()
            assert got["success"] and len(got["samples"]) == PAGE, "the API page differs from the store's"
            runs = [wrk_list(srv.url, key, args.connections, args.seconds, work) for _ in range(2)]
        finally:
            srv.close()
        best = max(runs, key=lambda r: r["rps"])
        floor_after = direct_pages(project, 5)
        floor = statistics.mean([floor, floor_after])
        print(f"list samples (page of {PAGE}, 2-key metadata filter, {args.samples} samples), "
              f"{args.connections} connections for {args.seconds} s:")
        print(f"  API: {best['rps']:.0f} requests/s, p50 {best['p50_ms']:.1f} ms, p99 {best['p99_ms']:.1f} ms, "
              f"{sum(r['errors'] for r in runs)} errors in {sum(r['requests'] for r in runs)} requests")
        print(f"  direct store read (page + total count, one loop): {1 / floor:.0f} pages/s ({floor * 1000:.2f} ms/page)")
        print(f"  ratio API cost per page / direct read = {(1 / best['rps']) / floor:.2f}x   (target <= 3x)")

        src = work / "pngs"
        make_pngs(src, args.files)
        res = ingest(init_project(work / "ingest"), src, args.clients)
        ref = cli_upload(init_project(work / "upload"), src)
        print(f"ingestion of {args.files} PNGs, one per request, {args.clients} clients: "
              f"{args.files / res['seconds']:.0f} files/s ({res['seconds']:.1f} s), {res['errors']} errors; "
              f"stored {res['stored']}, lost {res['lost']}, duplicated {res['duplicated']}")
        print(f"  reference: labelblocks upload of the same folder {args.files / ref:.0f} files/s ({ref:.1f} s)")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
