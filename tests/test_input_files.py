"""lambda_grpo.input_files: data files and model directories that verl would fail on after Ray started."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from lambda_grpo.input_files import (
    DataColumns,
    InputProblem,
    check_model_dir,
    check_tokenizer_dir,
    inspect_data_file,
)
from lambda_grpo.tiny_assets import TinySpec, ensure_tiny_assets, toy_add_rows

VERL_COLUMNS = DataColumns(prompt="prompt", reward=True)


def rows(count: int = 3) -> list[dict]:
    return toy_add_rows(TinySpec(), "train", count)


def parquet(path, records) -> str:
    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)


def problem(path, columns: DataColumns = VERL_COLUMNS) -> str:
    with pytest.raises(InputProblem) as error:
        inspect_data_file(str(path), columns)
    return str(error.value)


# ----------------------------------------------------------------------------------------------
# Data files.


def test_verl_schema_parquet_passes_and_reports_its_rows(tmp_path):
    assert inspect_data_file(parquet(tmp_path / "t.parquet", rows(5)), VERL_COLUMNS).rows == 5


def test_the_prepared_data_and_the_toy_task_pass(tmp_path):
    from lambda_grpo.data.rows import SCHEMA

    empty_row = {name: None for name in SCHEMA.names}
    row = {**empty_row, "data_source": "math500", "prompt": [{"role": "user", "content": "1+1"}],
           "reward_model": {"style": "rule", "ground_truth": "2"}}
    table = pa.Table.from_pylist([row], schema=SCHEMA)
    pq.write_table(table, tmp_path / "prepared.parquet")
    assert inspect_data_file(str(tmp_path / "prepared.parquet"), VERL_COLUMNS).rows == 1
    assert inspect_data_file(str(ensure_tiny_assets().train_file), VERL_COLUMNS).rows == TinySpec().n_train


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"", "is empty (0 bytes)"), (b"PAR1 this is not a parquet file", "is not a readable parquet file")],
    ids=["empty", "corrupt"],
)
def test_empty_or_corrupt_parquet(tmp_path, content, fragment):
    (tmp_path / "t.parquet").write_bytes(content)
    assert fragment in problem(tmp_path / "t.parquet")


def test_truncated_parquet(tmp_path):
    whole = parquet(tmp_path / "whole.parquet", rows(50))
    data = open(whole, "rb").read()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    assert "is not a readable parquet file" in problem(tmp_path / "t.parquet")


def test_parquet_without_rows(tmp_path):
    table = pa.Table.from_pylist(rows(1)).slice(0, 0)
    pq.write_table(table, tmp_path / "t.parquet")
    assert problem(tmp_path / "t.parquet").endswith("has no rows")


@pytest.mark.parametrize("column", ["prompt", "data_source", "reward_model"])
def test_missing_column_is_named_with_the_columns_present(tmp_path, column):
    path = parquet(tmp_path / "t.parquet", [{k: v for k, v in r.items() if k != column} for r in rows()])
    message = problem(path)
    assert f"has no column {column!r}" in message and "its columns: " in message


def test_prompt_as_plain_text_is_refused(tmp_path):
    path = parquet(tmp_path / "t.parquet", [{**r, "prompt": "What is 1 + 1?"} for r in rows()])
    assert "holds string, verl expects chat messages" in problem(path)


def test_reward_model_without_ground_truth_is_refused(tmp_path):
    path = parquet(tmp_path / "t.parquet", [{**r, "reward_model": {"style": "rule"}} for r in rows()])
    assert "reward_model['ground_truth']" in problem(path)


def test_prompt_key_and_reward_columns_follow_the_config(tmp_path):
    records = [{"question": r["prompt"]} for r in rows()]
    path = parquet(tmp_path / "t.parquet", records)
    assert inspect_data_file(path, DataColumns(prompt="question", reward=False)).rows == 3
    assert "has no column 'prompt' (data.prompt_key)" in problem(path, DataColumns(prompt="prompt", reward=False))


@pytest.mark.parametrize(("name", "fragment"), [("t.csv", "verl reads only .parquet, .json, .jsonl files"),
                                                ("missing.parquet", "does not exist")])
def test_unsupported_or_missing_file(tmp_path, name, fragment):
    if name.endswith(".csv"):
        (tmp_path / name).write_text("a,b\n")
    assert fragment in problem(tmp_path / name)


def test_directory_is_refused(tmp_path):
    (tmp_path / "d.parquet").mkdir()
    assert "is a directory" in problem(tmp_path / "d.parquet")


def test_jsonl_records_are_checked_like_parquet_rows(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in rows()) + "\n")
    assert inspect_data_file(str(good), VERL_COLUMNS).rows is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows(1)[0], "prompt": "text"}) + "\n")
    assert "verl expects chat messages" in problem(bad)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    assert "holds no records" in problem(blank)
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    assert "is not JSON" in problem(garbage)


def test_a_large_row_group_is_not_read_whole(tmp_path):
    """Peak Arrow memory of the check stays far below the size of the file's one row group (40 MB).

    Reading whole column chunks (pyarrow's default) peaks at ~45 MB here, streaming pages at ~9 MB,
    whatever the file's size.
    """
    records = [{**r, "prompt": [{"role": "user", "content": f"{i:08d}" * 500}]} for i, r in enumerate(rows(10_000))]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=10_000, compression="none", use_dictionary=False)
    assert path.stat().st_size > 40e6
    code = ("import sys, pyarrow as pa; from lambda_grpo.input_files import inspect_data_file, DataColumns; "
            "inspect_data_file(sys.argv[1], DataColumns('prompt', True)); print(pa.default_memory_pool().max_memory())")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) < 20e6


# ----------------------------------------------------------------------------------------------
# Model directories.


def model_dir(path, weights: bool = True, config: bool = True):
    path.mkdir()
    if config:
        (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    if weights:
        save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text("{}")
    return path


def model_problem(path, **kwargs) -> str:
    with pytest.raises(InputProblem) as error:
        check_model_dir(str(path), **kwargs)
    return str(error.value)


def test_a_complete_model_directory_passes(tmp_path):
    check_model_dir(str(model_dir(tmp_path / "m")))
    check_model_dir(str(ensure_tiny_assets().model_dir))
    check_tokenizer_dir(str(ensure_tiny_assets().model_dir))


def test_model_directory_without_config_or_weights(tmp_path):
    assert "has no config.json" in model_problem(model_dir(tmp_path / "a", config=False))
    assert "has no weights" in model_problem(model_dir(tmp_path / "b", weights=False))
    assert "does not exist" in model_problem(tmp_path / "none")


def test_config_json_may_live_elsewhere(tmp_path):
    folder = model_dir(tmp_path / "m", config=False)
    config = model_dir(tmp_path / "c", weights=False)
    check_model_dir(str(folder), config_dir=str(config))


def test_truncated_or_garbage_safetensors(tmp_path):
    folder = model_dir(tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    assert "is truncated" in model_problem(folder)
    weights.write_bytes(b"\x00" * 64)
    assert "unreadable header" in model_problem(folder)


def test_sharded_weights_need_every_shard(tmp_path):
    folder = model_dir(tmp_path / "m", weights=False)
    save_file({"a": np.zeros(2, dtype=np.float32)}, str(folder / "model-00001-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "lists 1 missing shard(s), e.g. model-00002-of-00002.safetensors" in model_problem(folder)
    save_file({"b": np.zeros(2, dtype=np.float32)}, str(folder / "model-00002-of-00002.safetensors"))
    check_model_dir(str(folder))


def test_tokenizer_directory_needs_a_vocabulary(tmp_path):
    folder = model_dir(tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InputProblem, match="has no tokenizer"):
        check_tokenizer_dir(str(folder))
