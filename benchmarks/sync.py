"""Sync benchmark.

A folder of small PNG files (100,000 by default, 8x8 pixels, each different):

- first sync: `labelblocks sync FOLDER` into a new project, against `labelblocks upload
  FOLDER` of the same folder into another new project (target: at most 1.2x);
- no-change re-sync: `labelblocks sync FOLDER` again, against a bare walk of the folder
  (``os.scandir`` + ``stat`` of every file) plus one read of the project's source column
  (target: at most 2x).

Both commands run in-process (the CLI's own code, output dropped), alternating, each timed
``--repeats`` times on fresh projects; the medians are compared. The folder is written once,
untimed.

Usage: python benchmarks/sync.py [--files 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

from _workers import cli_in_process, cpu_flags

from labelblocks.project import DATA_DIR, init_project


def write_pngs(folder: Path, n: int) -> None:
    """``n`` distinct 8x8 grey PNGs in 100 subfolders (a PNG by hand: Pillow would dominate)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (8).to_bytes(4, "big") * 2 + b"\x08\x00\x00\x00\x00")
    end = chunk(b"IEND", b"")
    for i in range(n):
        sub = folder / f"part{i % 100:02d}"
        if i < 100:
            sub.mkdir(parents=True, exist_ok=True)
        rows = b"".join(b"\x00" + bytes(((i >> (8 * (r % 3))) + r + c) & 0xFF for c in range(8)) for r in range(8))
        (sub / f"img{i:06d}.png").write_bytes(head + chunk(b"IDAT", zlib.compress(rows)) + end)


def walk(folder: Path) -> int:
    n = 0
    stack = [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    e.stat()
                    n += 1
    return n


def bare_peer(folder: Path, project: Path) -> float:
    t = time.perf_counter()
    n = walk(folder)
    con = sqlite3.connect(project / DATA_DIR / "project.db")
    sources = con.execute("SELECT sample_id, value FROM sample_metadata WHERE key = 'source'").fetchall()
    con.close()
    dt = time.perf_counter() - t
    assert len(sources) == n, (len(sources), n)
    return dt


def timed(project: Path, *args: str) -> float:
    t = time.perf_counter()
    cli_in_process(project, *args)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; {a.files:,} files, {a.repeats} repeats", flush=True)
    work = Path(tempfile.mkdtemp(prefix="labelblocks-bench-sync-"))
    try:
        folder = work / "src"
        t = time.perf_counter()
        write_pngs(folder, a.files)
        print(f"wrote the folder in {time.perf_counter() - t:.1f} s (untimed)", flush=True)
        sync_s, upload_s, resync_s, peer_s = [], [], [], []
        for r in range(a.repeats):
            up = init_project(work / f"up{r}")
            upload_s.append(timed(up, "upload", str(folder)))
            synced = init_project(work / f"sync{r}")
            sync_s.append(timed(synced, "sync", str(folder)))
            resync_s.append(timed(synced, "sync", str(folder)))
            peer_s.append(bare_peer(folder, synced))
            print(f"  repeat {r + 1}: upload {upload_s[-1]:.2f} s, sync {sync_s[-1]:.2f} s, "
                  f"re-sync {resync_s[-1]:.3f} s, walk + source column {peer_s[-1]:.3f} s", flush=True)
            shutil.rmtree(up)
            shutil.rmtree(synced)
        s, u = statistics.median(sync_s), statistics.median(upload_s)
        rs, p = statistics.median(resync_s), statistics.median(peer_s)
        print(f"first sync: {s:.2f} s ({a.files / s:,.0f} files/s) against upload {u:.2f} s: "
              f"{s / u:.2f}x (target <= 1.2x)")
        print(f"no-change re-sync: {rs:.3f} s against walk + one read of the source column {p:.3f} s: "
              f"{rs / p:.2f}x (target <= 2x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
