"""Result tables of predict/embed on disk: CSV, JSON Lines, Parquet, or .npy with an index, written in parts
so that a killed run loses at most the part in progress and a rerun skips what is done.

While a run goes on, ``OUT.parts/`` holds ``part-00000.<ext>``, ... each renamed into place whole. When every
input has a row the parts are merged, in input order, into ``OUT`` (temp file, then rename) and removed."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..convert.api import write_atomically

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet", ".npy": "npy"}
EMBEDDING = "embedding"


def format_of(out: str | Path, *, embedding: bool) -> str:
    suffix = Path(out).suffix.lower()
    allowed = (".parquet", ".npy", ".jsonl") if embedding else (".csv", ".jsonl", ".parquet")
    if suffix not in allowed:
        raise ValueError(f"--out {out}: expected a file ending in {', '.join(allowed)}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(f"--out {out}: Parquet needs pyarrow (pip install 'onnx-zoo-torch[ray]' or pyarrow)") \
                from None
    return FORMATS[suffix]


def index_path(out: Path) -> Path:
    """The index beside an .npy of embeddings: feats.npy -> feats.index.csv (path, error; row i = row i)."""
    return out.with_name(out.stem + ".index.csv")


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != list(columns):
            raise ValueError(f"{path}: columns {reader.fieldnames} differ from this run's {list(columns)} "
                             "(another --top, or another command): choose another --out or remove it")
        return [{k: (None if v == "" else float(v) if k.startswith("prob_") else v) for k, v in row.items()}
                for row in reader]


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in columns} for row in rows)
    path.write_text(buffer.getvalue())


def _save_npy(path: Path, matrix: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add .npy to the temporary name
        np.save(f, matrix)


def _jsonable(row: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}


def _schema(columns: Sequence[str]):
    import pyarrow as pa

    kinds = {EMBEDDING: pa.list_(pa.float32())}
    return pa.schema([(c, kinds.get(c, pa.float64() if c.startswith("prob_") else pa.string())) for c in columns])


class Table:
    """One result table on disk in one format, with the columns of the run that writes it."""

    def __init__(self, out: str | Path, columns: Sequence[str], *, embedding: bool = False):
        self.out = Path(out)
        self.columns = list(columns)
        self.format = format_of(self.out, embedding=embedding)
        self.parts = self.out.with_name(self.out.name + ".parts")

    # one file of rows, in this table's format
    def _read(self, path: Path) -> list[dict[str, Any]]:
        if self.format == "csv":
            return _read_csv(path, self.columns)
        if self.format == "npy":
            rows = _read_csv(index_path(path), ["path", "error"])
            vectors = np.load(path)
            for row, vector in zip(rows, vectors):
                row[EMBEDDING] = None if row["error"] else vector
            return rows
        if self.format == "jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        if rows and list(rows[0]) != self.columns:
            raise ValueError(f"{path}: columns {list(rows[0])} differ from this run's {self.columns} "
                             "(another --top, or another command): choose another --out or remove it")
        if self.format == "parquet" or self.format == "jsonl":
            for row in rows:
                if row.get(EMBEDDING) is not None:
                    row[EMBEDDING] = np.asarray(row[EMBEDDING], dtype=np.float32)
        return rows

    def _write(self, path: Path, rows: Sequence[dict]) -> None:
        """Write whole files only: each lands under its name by a rename (the index of an .npy last)."""
        if self.format == "csv":
            write_atomically(path, lambda tmp: _write_csv(tmp, rows, self.columns))
        elif self.format == "jsonl":
            text = "".join(json.dumps(_jsonable(row)) + "\n" for row in rows)
            write_atomically(path, lambda tmp: tmp.write_text(text))
        elif self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([{c: row.get(c) for c in self.columns} for row in rows],
                                         schema=_schema(self.columns))
            write_atomically(path, lambda tmp: pq.write_table(table, str(tmp)))
        else:
            dim = next((len(r[EMBEDDING]) for r in rows if r.get(EMBEDDING) is not None), 0)
            matrix = np.full((len(rows), dim), np.nan, dtype=np.float32)
            for i, row in enumerate(rows):
                if row.get(EMBEDDING) is not None:
                    matrix[i] = row[EMBEDDING]
            write_atomically(path, lambda tmp: _save_npy(tmp, matrix))
            write_atomically(index_path(path), lambda tmp: _write_csv(tmp, rows, ["path", "error"]))

    def _part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        found = sorted(p for p in self.parts.iterdir() if re.fullmatch(r"part-\d{5}\.\w+", p.name)
                       and p.suffix == self.out.suffix)
        if self.format == "npy":  # a part counts once its index, written last, is there
            found = [p for p in found if index_path(p).is_file()]
        return found

    def done(self) -> list[dict[str, Any]]:
        """The rows already written: the finished table (an earlier run) and the parts of an interrupted one."""
        rows = self._read(self.out) if self.out.is_file() else []
        for part in self._part_files():
            rows += self._read(part)
        return rows

    def write_part(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        existing = self._part_files()
        number = int(existing[-1].name[5:10]) + 1 if existing else 0
        self._write(self.parts / f"part-{number:05d}{self.out.suffix}", rows)

    def finish(self, order: Sequence[str]) -> list[dict[str, Any]]:
        """Merge what is done into OUT: one row per path, in ``order`` (rows of other paths after them, as
        found), and remove the parts. Returns the rows."""
        rows = sort_rows(self.done(), order)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._write(self.out, rows)
        shutil.rmtree(self.parts, ignore_errors=True)
        return rows


def sort_rows(rows: Iterable[dict], order: Sequence[str]) -> list[dict]:
    """One row per path (the last written wins), in the order of ``order``, then any others."""
    by_path = {row["path"]: row for row in rows}
    position = {path: i for i, path in enumerate(order)}
    return sorted(by_path.values(), key=lambda r: position.get(r["path"], len(position)))
