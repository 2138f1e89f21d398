"""Read a dataset's rows, in file order, from a local file or a `datasets` hub copy.

A source is one of:
  path/to/file.jsonl      one JSON object per line (blank lines skipped)
  path/to/file.json       a JSON list of objects, or an object with the list under "data", "rows" or "examples"
  path/to/file.parquet    read with pyarrow (nulls become None)
  hf:ID[:CONFIG]@SPLIT    `datasets.load_dataset(ID, CONFIG, split=SPLIT)`, for a machine that reaches a hub
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HUB_PREFIX = "hf:"
_JSON_LIST_KEYS = ("data", "rows", "examples")


def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return rows


def _read_json(path: Path) -> list[Any]:
    content = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(content, dict):
        key = next((key for key in _JSON_LIST_KEYS if isinstance(content.get(key), list)), None)
        if key is None:
            raise ValueError(f"{path}: a JSON object without a list under any of {list(_JSON_LIST_KEYS)}")
        content = content[key]
    if not isinstance(content, list):
        raise ValueError(f"{path}: expected a JSON list of rows, found {type(content).__name__}")
    return content


def _read_parquet(path: Path) -> list[Any]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def parse_hub_source(source: str) -> tuple[str, str | None, str]:
    """("ID", "CONFIG" or None, "SPLIT") from "hf:ID[:CONFIG]@SPLIT"; ValueError naming the expected form."""
    body = source[len(HUB_PREFIX) :]
    name, at, split = body.rpartition("@")
    if not at or not name or not split:
        raise ValueError(f"hub source {source!r}: expected hf:ID[:CONFIG]@SPLIT, e.g. hf:openai/gsm8k:main@test")
    dataset_id, _, config = name.partition(":")
    return dataset_id, config or None, split


def _read_hub(source: str) -> list[Any]:
    import datasets

    dataset_id, config, split = parse_hub_source(source)
    return list(datasets.load_dataset(dataset_id, config, split=split))


def read_rows(source: str) -> list[Any]:
    """All rows of `source` (see module docstring), in order. Rows need not be objects: the mapping checks them."""
    if source.startswith(HUB_PREFIX):
        return _read_hub(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"source file not found: {path}")
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json, .parquet or hf:ID@SPLIT")
    return reader(path)
