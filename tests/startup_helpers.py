"""Inputs for the tests of the start-up checks: data files in verl's schema (the toy task's rows), and a Ray
temp dir short enough for Ray's socket paths (pytest's tmp_path is not)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lambda_grpo.tiny_assets import TinySpec, toy_add_rows

BATCH = 1024
"""data.train_batch_size of the shipped model sizes: the train file must fill one batch."""


def write_rows(path: Path, count: int, **changes) -> Path:
    """`count` rows in verl's schema, with `changes` applied to every row."""
    pq.write_table(pa.Table.from_pylist([{**row, **changes} for row in toy_add_rows(TinySpec(), "train", count)]), path)
    return path


def run_inputs(folder: Path) -> list[str]:
    """Overrides naming a train file that fills one batch, a small val file and a checkpoint dir, all in `folder`."""
    write_rows(folder / "train.parquet", BATCH)
    write_rows(folder / "test.parquet", 8)
    return [f"data.train_files={folder / 'train.parquet'}", f"data.val_files={folder / 'test.parquet'}",
            f"trainer.default_local_dir={folder / 'checkpoints'}"]


@contextlib.contextmanager
def short_temp_dir() -> Iterator[Path]:
    """A fresh empty folder under /tmp (no `ray start` cluster in it), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="lgray-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
