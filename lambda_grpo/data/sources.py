"""Read a dataset's rows, in file order, from a local file or a `datasets` hub copy.

A source is one of:
  path/to/file.jsonl      one JSON object per line (blank lines skipped)
  path/to/file.json       a JSON list of objects, or an object with the list under "data", "rows" or "examples"
  path/to/file.parquet    read with pyarrow (nulls become None)
  hf:ID[:CONFIG]@SPLIT    `datasets.load_dataset(ID, CONFIG, split=SPLIT)`, for a machine that reaches a hub

Errors are one line naming the source: a file that cannot be read or decoded, and a hub that does not answer
within `HUB_PROBE_TIMEOUT_S` (probed before `datasets` starts its minutes of retries; skipped when the hub is
configured offline, HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1, where `datasets` reads its local cache).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HUB_PREFIX = "hf:"
_JSON_LIST_KEYS = ("data", "rows", "examples")

HUB_PROBE_TIMEOUT_S = 5.0
"""How long the hub may take to answer one HTTP request before a hub source is declared unreachable (seconds)."""


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
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(content, dict):
        key = next((key for key in _JSON_LIST_KEYS if isinstance(content.get(key), list)), None)
        if key is None:
            raise ValueError(f"{path}: a JSON object without a list under any of {list(_JSON_LIST_KEYS)}")
        content = content[key]
    if not isinstance(content, list):
        raise ValueError(f"{path}: expected a JSON list of rows, found {type(content).__name__}")
    return content


def _read_parquet(path: Path) -> list[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except pa.ArrowException as error:
        raise ValueError(f"{path}: not a readable parquet file ({error})") from None


def parse_hub_source(source: str) -> tuple[str, str | None, str]:
    """("ID", "CONFIG" or None, "SPLIT") from "hf:ID[:CONFIG]@SPLIT"; ValueError naming the expected form."""
    body = source[len(HUB_PREFIX) :]
    name, at, split = body.rpartition("@")
    if not at or not name or not split:
        raise ValueError(f"hub source {source!r}: expected hf:ID[:CONFIG]@SPLIT, e.g. hf:openai/gsm8k:main@test")
    dataset_id, _, config = name.partition(":")
    return dataset_id, config or None, split


def hub_unreachable(endpoint: str, timeout_s: float) -> str | None:
    """Why `endpoint` gave no HTTP answer within `timeout_s` seconds (name resolution included), or None if it
    answered (any status: a 404 is an answer)."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except (urllib.error.URLError, OSError, ValueError) as error:
            outcome.append(str(getattr(error, "reason", error)))

    thread = threading.Thread(target=probe, daemon=True, name="lambda_grpo-hub-probe")
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def _read_hub(source: str) -> list[Any]:
    import datasets

    dataset_id, config, split = parse_hub_source(source)
    if not datasets.config.HF_HUB_OFFLINE:
        reason = hub_unreachable(datasets.config.HF_ENDPOINT, HUB_PROBE_TIMEOUT_S)
        if reason is not None:
            raise ValueError(
                f"hub source {source!r}: the hub {datasets.config.HF_ENDPOINT} is unreachable ({reason}); pass a "
                "local .jsonl/.json/.parquet copy instead, or set HF_ENDPOINT to a reachable mirror"
            )
    try:
        return list(datasets.load_dataset(dataset_id, config, split=split))
    except Exception as error:  # datasets' errors span many types; the CLI reports one line
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"hub source {source!r}: {type(error).__name__}: {first_line}") from None


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
    try:
        return reader(path)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
