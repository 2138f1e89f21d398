"""Cheap start-up checks of the files a run reads: verl's data files and Hugging Face model directories.

Each check returns None when the input looks usable and otherwise one sentence saying what is wrong and
how to fix it (the caller prefixes the config key). They read metadata and a few records, never a whole
file, so they take milliseconds on a multi-GB parquet; they catch what would otherwise fail only after
Ray, the workers and the model have started:

- data files (verl's `RLHFDataset`, which loads `.parquet`, `.json` and `.jsonl` with `datasets`): the
  file opens (parquet footer, JSON first record), has rows, and holds the columns verl reads — the
  prompt column (`data.prompt_key`) as chat messages [{role, content}], and for verl's built-in reward
  managers `data_source` and `reward_model.ground_truth`;
- model directories: a `config.json`, weights (safetensors, single or sharded, with headers that match
  the file sizes; or PyTorch `.bin`), and tokenizer files.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".parquet", ".json", ".jsonl")
"""The file types verl's RLHFDataset reads (anything else raises "Unsupported file format")."""

ROWS_TO_READ = 4
"""Records read per data file to prove the data pages decode (the schema alone lives in the footer)."""

SAFETENSORS_MAX_HEADER = 100 * 2**20
"""A safetensors header longer than this is not a header (the format's own limit)."""

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
"""What transformers' `from_pretrained` loads, in its order of preference."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
"""Any one of these holds a tokenizer's vocabulary (fast, SentencePiece or BPE)."""


@dataclass(frozen=True)
class DataColumns:
    """What verl reads from every row of a data file.

    prompt: the prompt column (`data.prompt_key`), a list of chat messages with `role` and `content`.
    reward: True when the reward manager reads `data_source` and `reward_model["ground_truth"]` (all of
        verl 0.9.1's built-in reward-loop managers do).
    """

    prompt: str
    reward: bool


@dataclass(frozen=True)
class DataFileFacts:
    """What `inspect_data_file` learned: the row count (None when the format does not tell cheaply)."""

    rows: int | None


class InputProblem(ValueError):
    """An input file that the run would fail on; the message says what is wrong and how to fix it."""


def inspect_data_file(path: str, columns: DataColumns) -> DataFileFacts:
    """Open one local data file as verl would and check its columns; raise InputProblem if unusable."""
    file = Path(os.path.expanduser(path))
    if not file.exists():
        raise InputProblem(f"{path} does not exist (prepare it with `python -m lambda_grpo.data prepare`)")
    if file.is_dir():
        raise InputProblem(f"{path} is a directory; name the data files themselves")
    if file.suffix not in DATA_SUFFIXES:
        raise InputProblem(f"{path}: verl reads only {', '.join(DATA_SUFFIXES)} files")
    if file.stat().st_size == 0:
        raise InputProblem(f"{path} is empty (0 bytes); prepare it again")
    if file.suffix == ".parquet":
        return _inspect_parquet(file, path, columns)
    return _inspect_json(file, path, columns)


def _inspect_parquet(file: Path, path: str, columns: DataColumns) -> DataFileFacts:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # buffer_size > 0 streams pages instead of loading whole column chunks: a few rows stay cheap
        # even when one row group holds gigabytes.
        parquet = pq.ParquetFile(file, buffer_size=1 << 16, pre_buffer=False)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as error:
        raise InputProblem(f"{path} is not a readable parquet file ({_first_line(error)}); prepare it again") from None
    rows = parquet.metadata.num_rows
    if rows == 0:
        raise InputProblem(f"{path} has no rows")
    _check_parquet_schema(schema, path, columns)
    try:
        next(parquet.iter_batches(batch_size=ROWS_TO_READ, columns=_top_level(columns)))
    except (pa.ArrowException, OSError) as error:
        raise InputProblem(f"{path}: its first rows do not decode ({_first_line(error)}); prepare it again") from None
    return DataFileFacts(rows=rows)


def _check_parquet_schema(schema: Any, path: str, columns: DataColumns) -> None:
    import pyarrow as pa

    names = schema.names
    for name in _top_level(columns):
        if name not in names:
            raise InputProblem(_missing_column(path, name, names, columns))
    prompt = schema.field(columns.prompt).type
    element = prompt.value_type if pa.types.is_list(prompt) or pa.types.is_large_list(prompt) else None
    if element is None or not pa.types.is_struct(element) or not {"role", "content"} <= {f.name for f in element}:
        raise InputProblem(_not_messages(path, columns.prompt, str(prompt)))
    if columns.reward:
        reward = schema.field("reward_model").type
        if not pa.types.is_struct(reward) or "ground_truth" not in {f.name for f in reward}:
            raise InputProblem(f"{path}: column reward_model is {reward}, verl's reward managers read "
                               "reward_model['ground_truth'] (a struct with a ground_truth field)")


def _inspect_json(file: Path, path: str, columns: DataColumns) -> DataFileFacts:
    with file.open("rb") as stream:
        first = next((line for line in stream if line.strip()), b"")
    if not first:
        raise InputProblem(f"{path} holds no records")
    try:
        record = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        if first.lstrip()[:1] in (b"[", b"{"):
            return DataFileFacts(rows=None)  # one JSON document over many lines: no cheap look at a record
        raise InputProblem(f"{path}: its first line is not JSON; verl reads JSON Lines (one object per line)") from None
    if not isinstance(record, dict):
        raise InputProblem(f"{path}: its first record is {type(record).__name__}, verl reads one object per line")
    for name in _top_level(columns):
        if name not in record:
            raise InputProblem(_missing_column(path, name, list(record), columns))
    messages = record[columns.prompt]
    if not (isinstance(messages, list) and messages
            and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages)):
        raise InputProblem(_not_messages(path, columns.prompt, type(messages).__name__))
    if columns.reward and not (isinstance(record["reward_model"], dict) and "ground_truth" in record["reward_model"]):
        raise InputProblem(f"{path}: reward_model of its first record has no ground_truth, which verl's reward "
                           "managers read")
    return DataFileFacts(rows=None)


def _top_level(columns: DataColumns) -> list[str]:
    return [columns.prompt, *(("data_source", "reward_model") if columns.reward else ())]


def _missing_column(path: str, name: str, present: Sequence[str], columns: DataColumns) -> str:
    role = "data.prompt_key" if name == columns.prompt else "verl's reward manager reads it"
    return f"{path} has no column {name!r} ({role}); its columns: {', '.join(present)}"


def _not_messages(path: str, name: str, found: str) -> str:
    return (f"{path}: column {name!r} (data.prompt_key) holds {found}, verl expects chat messages "
            "[{role, content}, ...]; `python -m lambda_grpo.data prepare` writes that shape")


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


# ----------------------------------------------------------------------------------------------
# Model directories.


def check_model_dir(path: str, config_dir: str | None = None) -> None:
    """A local Hugging Face model directory has config.json (in `config_dir`, default `path`) and weights."""
    folder = Path(os.path.expanduser(path))
    if not folder.is_dir():
        raise InputProblem(f"{path} is not a directory" if folder.exists() else f"{path} does not exist")
    config = Path(os.path.expanduser(config_dir)) if config_dir else folder
    try:
        json.loads((config / "config.json").read_text())
    except FileNotFoundError:
        raise InputProblem(f"{config} has no config.json; point at a complete Hugging Face model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputProblem(f"{config}/config.json is not valid JSON ({error})") from None
    _check_weights(folder)


def check_tokenizer_dir(path: str) -> None:
    """A local tokenizer directory holds one of TOKENIZER_FILES."""
    folder = Path(os.path.expanduser(path))
    if not folder.is_dir():
        raise InputProblem(f"{path} is not a directory" if folder.exists() else f"{path} does not exist")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InputProblem(f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES)})")


def _check_weights(folder: Path) -> None:
    present = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if present is None:
        raise InputProblem(f"{folder} has no weights ({', '.join(WEIGHT_FILES)}); the download is incomplete")
    if present.endswith(".index.json"):
        shards = _index_shards(folder / present)
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise InputProblem(f"{folder}: {present} lists {len(missing)} missing shard(s), e.g. {missing[0]}; "
                               "the download is incomplete")
        files = [folder / name for name in shards]
    else:
        files = [folder / present]
    for file in files:
        if file.suffix == ".safetensors":
            _check_safetensors(file)
        elif file.stat().st_size == 0:
            raise InputProblem(f"{file} is empty (0 bytes); the download is incomplete")


def _index_shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
        raise InputProblem(f"{index} is not a weight index ({type(error).__name__}: {error})") from None


def _check_safetensors(file: Path) -> None:
    """The header parses and the file is as long as the tensors it declares (a truncated download is not)."""
    size = file.stat().st_size
    with file.open("rb") as stream:
        prefix = stream.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        header = stream.read(length) if 0 < length <= min(SAFETENSORS_MAX_HEADER, size - 8) else b""
    try:
        tensors: Mapping[str, Any] = json.loads(header)
        end = max((entry["data_offsets"][1] for name, entry in tensors.items() if name != "__metadata__"), default=0)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
        raise InputProblem(f"{file} is not a safetensors file (unreadable header); the download is corrupt") from None
    if size < 8 + length + end:
        raise InputProblem(f"{file} is truncated ({size} bytes, its header declares {8 + length + end}); "
                           "download it again")
