"""prepare's look-up of each source's role in its folder's download record (.gptforge-download.json), the way
it was (the record read and parsed once per file) next to the way it is (once per folder), in one run.

    python benchmarks/download_record.py [--files 2000]

A Hub download of a few thousand parquet files records them all in one folder's record, so reading it per file
grows with the square of the number of files. Prints both times and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gptforge.data.provenance import Record, recorded_role


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = [folder / f"{i:03d}_{i:05d}.parquet" for i in range(args.files)]
        record = Record(folder)
        for i, path in enumerate(paths):
            path.write_bytes(b"x" * (i + 1))
            entries = record.files if i < len(paths) - 1 else {}
            entries[path.name] = {"source": f"hf://datasets/example/data/{path.name}", "size": i + 1,
                                       "sha256": f"{i:064x}", "git_blob": f"{i:040x}", "repo": "example",
                                       "revision": "0" * 40, "path": f"data/{path.name}",
                                       "role": "val" if i == 0 else "train"}
        record.put(paths[-1].name, entries[paths[-1].name])  # written once, with every entry
        start = time.perf_counter()
        per_file = [recorded_role(p) for p in paths]
        per_file_s = time.perf_counter() - start
        start = time.perf_counter()
        once = Record(folder)
        per_folder = [recorded_role(p, record=once) for p in paths]
        per_folder_s = time.perf_counter() - start
    assert per_file == per_folder and per_file.count("val") == 1
    print(f"{args.files} files, record {len(record.files)} entries: read per file {per_file_s:.3f} s, "
          f"once per folder {per_folder_s:.3f} s: {per_file_s / per_folder_s:.0f}x")


if __name__ == "__main__":
    main()
