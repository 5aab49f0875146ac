"""The cost of keying `external` inputs by content: a stat walk (sizes, mtimes, inodes) against a full hash.

A run whose recipe reads an external dataset gets a cache key over the dataset's
content. labctl hashes every byte once, then keeps the hash with a digest of every
file's size, mtime and inode, and re-reads the bytes only when that digest changes
(labctl.fingerprints). This measures, on the same files in the same run:

1. many small files: ``--files`` files of 8 KB (real bytes);
2. few large files: ``--gb`` GB as sparse 64 MB files (sha256 costs the same on
   holes; no disk is read, so this is the CPU floor of hashing);

for each: the stat walk (``tree_stat``), the full content hash (``dir_content_hash``,
threaded), and ``fingerprint()`` when the stored hash is reused (stat walk + one
lookup). Then it extrapolates both to 50 GB held in 500,000 files of 100 KB.

    PYTHONPATH=. python bench/bench_fingerprints.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import bench_server, machine_line, markdown_table, median, report_section, step_printer, timed

from labctl.artifacts.hashing import dir_content_hash
from labctl.db import connect, ensure_schema
from labctl.fingerprints import fingerprint, tree_stat

HEADING = "Fingerprints of external inputs (stat walk vs. full hash)"


def make_small(root: Path, count: int) -> None:
    block = os.urandom(8192)
    for i in range(count):
        folder = root / f"shard{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"item{i:07d}.bin").write_bytes(block[:8000] + i.to_bytes(8, "big") + block[8008:])


def make_sparse(root: Path, gigabytes: float) -> int:
    root.mkdir(parents=True)
    size = 64 << 20
    count = max(1, int(gigabytes * (1 << 30) / size))
    for i in range(count):
        with open(root / f"part{i:05d}.bin", "wb") as f:
            f.write(i.to_bytes(8, "big"))
            f.truncate(size)
    return count


def settle(root: Path) -> None:
    old = time.time() - 3600
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (old, old))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--files", type=int, default=None, help="small files (default 200,000; quick 20,000)")
    parser.add_argument("--gb", type=float, default=None, help="GB of sparse large files (default 8; quick 1)")
    args = parser.parse_args()
    n_small = args.files or (20_000 if args.quick else 200_000)
    gigabytes = args.gb or (1.0 if args.quick else 8.0)
    rounds = 3
    say = step_printer()
    rows = []
    per_file_stat = hash_rate = 0.0
    with bench_server(["bench_fingerprints"]) as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url("bench_fingerprints")
        with connect(url) as conn:
            ensure_schema(conn)
            small, large = Path(tmp) / "small", Path(tmp) / "large"
            make_small(small, n_small)
            big_files = make_sparse(large, gigabytes)
            settle(small)
            settle(large)
            say(f"made {n_small:,} small files and {big_files} sparse 64 MB files")
            for label, root, files, nbytes in (
                (f"{n_small:,} files x 8 KB", small, n_small, n_small * 8192),
                (f"{gigabytes:g} GB in {big_files} sparse files", large, big_files, big_files * (64 << 20)),
            ):
                stat_s = median([timed(lambda root=root: tree_stat(str(root))) for _ in range(rounds)])
                hash_s = timed(lambda root=root: dir_content_hash(root))
                fingerprint(conn, str(root))  # stores the hash (mtimes are settled)
                reuse_s = median([timed(lambda root=root: fingerprint(conn, str(root))) for _ in range(rounds)])
                assert fingerprint(conn, str(root)).reused
                rows.append(
                    [
                        label,
                        f"{stat_s * 1000:,.0f} ms",
                        f"{reuse_s * 1000:,.0f} ms",
                        f"{hash_s:,.1f} s",
                        f"{hash_s / reuse_s:,.0f}x",
                    ]
                )
                say(f"{label}: stat {stat_s:.2f}s, reuse {reuse_s:.2f}s, hash {hash_s:.1f}s")
                if root is small:
                    per_file_stat = stat_s / files
                else:
                    hash_rate = nbytes / hash_s
    files_50, bytes_50 = 500_000, 50 * (1 << 30)
    body = "\n".join(
        [
            machine_line(server.describe()) + f"; load average {os.getloadavg()[0]:.0f} at the end",
            "",
            markdown_table(
                ["dataset", "stat walk", "fingerprint, hash reused", "full content hash", "full / reused"], rows
            ),
            "",
            f"Extrapolated to 50 GB in {files_50:,} files of 100 KB: the stat walk that decides whether the stored "
            f"hash still holds costs about {per_file_stat * files_50:,.0f} s per submission "
            f"({per_file_stat * 1e6:.1f} us per file); re-hashing every byte costs about "
            f"{bytes_50 / hash_rate / 60:,.1f} min at the {hash_rate / 1e6:,.0f} MB/s measured here (CPU only: "
            "sparse files, no disk read; a network file system adds its read time). Chosen: hash by content once, "
            "reuse the hash while every file's size, mtime and inode are unchanged, and hash again when any is not.",
        ]
    )
    report_section(HEADING, body, write=args.write)


if __name__ == "__main__":
    main()
