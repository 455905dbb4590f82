"""Image benchmark: build, verify and unpack time of an image of about --mb MB (prints figures).

    PYTHONPATH=scheduler .venv/bin/python bench/images.py [--mb 100] [--files 2000]

The tree: --files files of random bytes (incompressible, the worst case for gzip) totalling
--mb MB, in 20 folders. Figures: `walle image build` (pack + gzip + sha256), a rebuild of the
same tree (same digest: reproducibility), the node's work for a placement that lacks the
image (sha256 of the archive + checked unpack, what walle_image state=present does), and the
archive's size. The copy to the node is not included (it depends on the link; ansible's copy
over SSH adds its own time).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from walle.images import ImageStore, archive


def make_tree(root: Path, mb: int, files: int) -> None:
    size = mb * 1024 * 1024 // files
    for i in range(files):
        folder = root / f"d{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}").write_bytes(os.urandom(size))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="walle-bench-images-") as tmp:
        tmp = Path(tmp)
        make_tree(tmp / "tree", args.mb, args.files)
        store = ImageStore(tmp / "store")
        first, build_s = timed(lambda: store.build("bench:1", tmp / "tree"))
        again, rebuild_s = timed(lambda: store.build("bench:2", tmp / "tree"))
        blob = str(store.blob_path(first.digest))
        digest, verify_s = timed(lambda: archive.file_digest(blob))
        (tmp / "cache").mkdir()
        _, unpack_s = timed(lambda: archive.unpack(blob, str(tmp / "cache" / "x")))
        print(f"tree: {args.mb} MB in {args.files} files (random bytes)")
        print(f"archive: {first.size / 1e6:.1f} MB, {first.digest}")
        print(f"build: {build_s:.2f} s; rebuild: {rebuild_s:.2f} s, same digest: "
              f"{again.digest == first.digest}")
        print(f"node: verify sha256 {verify_s:.2f} s + checked unpack {unpack_s:.2f} s = "
              f"{verify_s + unpack_s:.2f} s (digest matches: {digest == first.digest})")


if __name__ == "__main__":
    main()
