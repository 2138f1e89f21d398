"""python -m lambda_grpo.data prepare: files in every format, the report, determinism, overlap, verl's reader."""

import hashlib
import json
import os
import socket
import stat
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambda_grpo.data.__main__ import main
from lambda_grpo.data.overlap import normalize_problem
from lambda_grpo.data.prepare import REPORT_NAME, prepare
from lambda_grpo.data.rows import INSTRUCTION, SCHEMA
from lambda_grpo.data.sources import parse_hub_source, read_rows

MATH_TRAIN = [
    {"problem": "What is $1+1$?", "solution": r"$1+1=\boxed{2}$", "level": "Level 1", "type": "Algebra"},
    {"problem": "Shared   problem:  compute $2^3$.", "solution": r"$\boxed{8}$", "level": "Level 2", "type": "Algebra"},
    {"problem": "No answer here.", "solution": "We give up."},
    "not an object",
    {"problem": "Find $\\frac{1}{2}+\\frac{1}{2}$.", "solution": r"$\boxed{1}$", "level": "L1", "type": "Prealgebra"},
]
GSM8K_TRAIN = [
    {"question": "Tom has 3 apples and eats 1. How many are left?", "answer": "3-1=2\n#### 2"},
    {"question": "Broken row", "answer": "the answer is 5"},
]
MATH500 = [
    {"problem": "shared problem: compute $2^3$.", "answer": "8", "subject": "Algebra", "level": 1, "unique_id": "a/1"},
    {"problem": "Compute $3 \\cdot 4$.", "answer": "12", "subject": "Algebra", "level": 1, "unique_id": "a/2"},
]
AIME24 = {"data": [{"id": 1, "problem": "Find the remainder when $2^{10}$ is divided by 7.", "answer": 2}]}


@pytest.fixture()
def sources(tmp_path):
    directory = tmp_path / "sources"
    directory.mkdir()
    (directory / "math_train.jsonl").write_text("\n".join(json.dumps(row) for row in MATH_TRAIN) + "\n\n")
    pq.write_table(pa.Table.from_pylist(GSM8K_TRAIN), directory / "gsm8k_train.parquet")
    (directory / "math500.jsonl").write_text("\n".join(json.dumps(row) for row in MATH500))
    (directory / "aime24.json").write_text(json.dumps(AIME24))
    return directory


def _prepare_args(sources, out_dir, *extra):
    return [
        "prepare", "--out-dir", str(out_dir),
        "--train", f"math_train={sources / 'math_train.jsonl'}",
        "--train", f"gsm8k_train={sources / 'gsm8k_train.parquet'}",
        "--eval", f"math500={sources / 'math500.jsonl'}",
        "--eval", f"aime24={sources / 'aime24.json'}",
        *extra,
    ]  # fmt: skip


def test_prepare_writes_verl_rows_and_reports_rejections_and_overlap(sources, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(_prepare_args(sources, out_dir)) == 0
    printed = capsys.readouterr().out
    assert "rejected row 2: none of the fields ['solution']" not in printed  # the field is there, the box is not
    assert "rejected row 2: field 'solution' has no complete, non-empty \\boxed{...}" in printed
    assert "rejected row 3: row is str, not an object" in printed
    assert "overlap: 1 math500 problems also in math_train" in printed
    assert "train.parquet: 4 rows" in printed and "val.parquet: 3 rows" in printed

    rows = pq.read_table(out_dir / "math_train.parquet").to_pylist()
    assert pq.read_schema(out_dir / "math_train.parquet").equals(SCHEMA, check_metadata=False)
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["2", "8", "1"]
    first = rows[0]
    assert first["data_source"] == "math_train" and first["ability"] == "math"
    assert first["prompt"] == [{"role": "user", "content": f"What is $1+1$? {INSTRUCTION}"}]
    assert first["reward_model"] == {"style": "rule", "ground_truth": "2"}
    assert first["extra_info"] == {
        "split": "train",
        "index": 0,
        "source_index": 0,
        "question": "What is $1+1$?",
        "answer": "2",
        "metadata": json.dumps({"level": "Level 1", "type": "Algebra"}),
    }
    assert [row["extra_info"]["source_index"] for row in rows] == [0, 1, 4]
    assert pq.read_table(out_dir / "aime24.parquet").to_pylist()[0]["reward_model"]["ground_truth"] == "2"
    combined = pq.read_table(out_dir / "train.parquet").to_pylist()
    assert [row["data_source"] for row in combined] == ["math_train"] * 3 + ["gsm8k_train"]
    assert [row["extra_info"]["index"] for row in combined] == [0, 1, 2, 3]
    validation = pq.read_table(out_dir / "val.parquet").to_pylist()
    assert [row["data_source"] for row in validation] == ["math500", "math500", "aime24"]

    report = json.loads((out_dir / REPORT_NAME).read_text())
    by_name = {dataset["name"]: dataset for dataset in report["datasets"]}
    assert (by_name["math_train"]["rows_read"], by_name["math_train"]["rows_written"]) == (5, 3)
    assert [rejected["source_index"] for rejected in by_name["math_train"]["rejected"]] == [2, 3]
    no_marker = {"source_index": 1, "reason": "field 'answer' has no '####' answer marker"}
    assert by_name["gsm8k_train"]["rejected"] == [no_marker]
    assert report["overlaps"] == [
        {"train": "math_train", "eval": "math500", "count": 1, "eval_source_indices": [0], "train_source_indices": [1]}
    ]


def test_outputs_are_deterministic_and_decontamination_drops_overlaps(sources, tmp_path):
    def digests(out_dir):
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(out_dir.iterdir())}

    assert main(_prepare_args(sources, tmp_path / "a")) == 0
    assert main(_prepare_args(sources, tmp_path / "b")) == 0
    first, second = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert {name: digest for name, digest in first.items() if name.endswith(".parquet")} == {
        name: digest for name, digest in second.items() if name.endswith(".parquet")
    }

    assert main(_prepare_args(sources, tmp_path / "clean", "--decontaminate")) == 0
    rows = pq.read_table(tmp_path / "clean/math_train.parquet").to_pylist()
    questions = [row["extra_info"]["question"] for row in rows]
    assert questions == ["What is $1+1$?", "Find $\\frac{1}{2}+\\frac{1}{2}$."]
    report = json.loads((tmp_path / "clean" / REPORT_NAME).read_text())
    assert {d["name"]: d["dropped_as_overlap"] for d in report["datasets"]}["math_train"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eval", "math=x.jsonl"], "unknown dataset 'math'"),
        (["--train", "math500=x.jsonl"], "'math500' is a eval set; pass it with --eval"),
        (["--eval", "math500=missing.jsonl"], "source file not found"),
        (["--eval", "math500=a.csv"], "unsupported file type"),
        (["--eval", "math500=x.jsonl", "--eval", "math500=y.jsonl"], "named twice"),
        ([], "nothing to prepare"),
    ],
)
def test_cli_errors_name_the_problem(tmp_path, capsys, args, message):
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "x.jsonl").write_text("{}\n")
    args = [arg.replace("=", f"={tmp_path}/") if "=" in arg else arg for arg in args]
    assert main(["prepare", "--out-dir", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err


def test_sources(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        read_rows(str(tmp_path / "bad.jsonl"))
    (tmp_path / "object.json").write_text('{"rows": [{"a": 1}]}')
    assert read_rows(str(tmp_path / "object.json")) == [{"a": 1}]
    (tmp_path / "scalar.json").write_text('{"answer": 1}')
    with pytest.raises(ValueError, match="without a list"):
        read_rows(str(tmp_path / "scalar.json"))
    assert parse_hub_source("hf:openai/gsm8k:main@test") == ("openai/gsm8k", "main", "test")
    assert parse_hub_source("hf:HuggingFaceH4/MATH-500@test") == ("HuggingFaceH4/MATH-500", None, "test")
    with pytest.raises(ValueError, match="hf:ID"):
        parse_hub_source("hf:openai/gsm8k")


def test_hub_source_calls_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or [{"a": 1}])
    assert read_rows("hf:openai/gsm8k:main@train") == [{"a": 1}]
    assert calls == [(("openai/gsm8k", "main"), {"split": "train"})]


def test_normalize_problem():
    assert normalize_problem("  Compute $2^3$.\n") == normalize_problem("compute   2^3.")
    assert normalize_problem("Ｃompute") == "compute"  # NFKC folds the full-width letter
    assert normalize_problem("compute 2^3") != normalize_problem("compute 2^4")


def test_verl_rlhf_dataset_reads_the_written_files(sources, tmp_path, monkeypatch):
    """verl's own reader: concatenates our files, builds raw_prompt and index, filters overlong prompts."""
    import datasets
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from lambda_grpo.tiny_assets import build_tokenizer

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    out_dir = tmp_path / "out"
    prepare({"math_train": str(sources / "math_train.jsonl")}, {"math500": str(sources / "math500.jsonl")}, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(tmp_path / "tokenizer"))
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 512,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "verl_cache"),
        }
    )
    files = [str(out_dir / "math_train.parquet"), str(out_dir / "math500.parquet")]
    dataset = RLHFDataset(files, tokenizer, config)
    assert len(dataset) == 5
    item = dataset[3]
    assert item["data_source"] == "math500"
    assert item["raw_prompt"] == [{"role": "user", "content": f"shared problem: compute $2^3$. {INSTRUCTION}"}]
    assert item["reward_model"]["ground_truth"] == "8"
    assert item["index"] == 0

    texts = [tokenizer.apply_chat_template(dataset[i]["raw_prompt"], add_generation_prompt=True, tokenize=False)
             for i in range(len(dataset))]
    lengths = sorted(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    limit = lengths[-1] - 1  # the longest prompt(s) no longer fit
    kept = sum(length <= limit for length in lengths)
    assert 0 < kept < len(lengths)
    short_prompts = RLHFDataset(files, tokenizer, OmegaConf.merge(config, {"max_prompt_length": limit}))
    assert len(short_prompts) == kept


def _listing(out_dir):
    return {path.name: path.read_bytes() for path in sorted(out_dir.iterdir())}


def test_a_rerun_with_fewer_datasets_leaves_one_consistent_set(sources, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(_prepare_args(sources, out_dir)) == 0
    (out_dir / "notes.txt").write_text("mine")  # not ours: never touched
    rerun = ["prepare", "--out-dir", str(out_dir), "--eval", f"math500={sources / 'math500.jsonl'}"]
    assert main(rerun) == 0
    assert sorted(_listing(out_dir)) == ["math500.parquet", "notes.txt", REPORT_NAME, "val.parquet"]
    printed = capsys.readouterr().out
    removed = "aime24.parquet, gsm8k_train.parquet, math_train.parquet, train.parquet"
    assert f"removed, as this run does not write them: {removed}" in printed
    report = json.loads((out_dir / REPORT_NAME).read_text())
    assert report["removed_from_previous_run"] == [
        "aime24.parquet", "gsm8k_train.parquet", "math_train.parquet", "train.parquet"
    ]  # fmt: skip
    assert [dataset["name"] for dataset in report["datasets"]] == ["math500"]
    assert report["combined"] == {"val.parquet": 2} and pq.read_table(out_dir / "val.parquet").num_rows == 2


def test_a_failure_mid_write_leaves_the_previous_set_intact(sources, tmp_path, monkeypatch, capsys):
    from lambda_grpo.data import prepare as prepare_module

    out_dir = tmp_path / "out"
    assert main(_prepare_args(sources, out_dir)) == 0
    before = _listing(out_dir)
    written = []

    def disk_full_after_two_files(rows, path):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(path)
        real_write_parquet(rows, path)

    real_write_parquet = prepare_module.write_parquet
    monkeypatch.setattr(prepare_module, "write_parquet", disk_full_after_two_files)
    assert main(_prepare_args(sources, out_dir, "--decontaminate")) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _listing(out_dir) == before  # same files, same bytes, no staging folder left


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_modes_follow_the_umask(sources, tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert main(_prepare_args(sources, tmp_path / "out")) == 0
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "out").iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_a_dataset_without_rows_is_an_error_and_nothing_is_written(sources, tmp_path, capsys):
    (sources / "broken.jsonl").write_text(json.dumps({"problem": "p", "solution": "no box"}) + "\n")
    (sources / "empty.jsonl").write_text("\n")
    out_dir = tmp_path / "out"
    args = ["prepare", "--out-dir", str(out_dir), "--train", f"math_train={sources / 'broken.jsonl'}",
            "--eval", f"math500={sources / 'empty.jsonl'}", "--eval", f"aime24={sources / 'aime24.json'}"]  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "empty output, nothing written" in error
    assert "math_train: none of its 1 rows could be mapped (row 0: field 'solution' has no complete" in error
    assert "math500: the source has no rows" in error
    assert not out_dir.exists() or not any(out_dir.iterdir())

    overlapping = ["prepare", "--out-dir", str(out_dir), "--decontaminate",
                   "--train", f"math_train={sources / 'math500.jsonl'}".replace("math500.jsonl", "same.jsonl"),
                   "--eval", f"math500={sources / 'math500.jsonl'}"]  # fmt: skip
    same = [{"problem": row["problem"], "solution": f"\\boxed{{{row['answer']}}}"} for row in MATH500]
    (sources / "same.jsonl").write_text("".join(json.dumps(row) + "\n" for row in same))
    assert main(overlapping) == 2
    assert "math_train: all 2 mapped rows overlap an evaluation set (--decontaminate)" in capsys.readouterr().err


@pytest.fixture()
def silent_server():
    """A TCP port that accepts connections and never answers (a black-holed proxy or firewall)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture()
def closed_port():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("endpoint", ["silent_server", "closed_port"])
def test_an_unreachable_hub_is_one_line_within_seconds(endpoint, request, tmp_path, monkeypatch, capsys):
    import datasets

    from lambda_grpo.data import sources as sources_module

    url = request.getfixturevalue(endpoint)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", url)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources_module, "HUB_PROBE_TIMEOUT_S", 1.0, raising=False)
    start = time.perf_counter()
    args = ["prepare", "--out-dir", str(tmp_path / "out"), "--eval", "math500=hf:HuggingFaceH4/MATH-500@test"]
    assert main(args) == 2
    assert time.perf_counter() - start < 5.0
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(f"error: hub source 'hf:HuggingFaceH4/MATH-500@test': the hub {url} is unreachable (")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("math500.parquet", b"PAR1 not really", "not a readable parquet file"),
        ("math500.jsonl", b'{"problem": "caf\xe9"}\n', "not UTF-8 text"),
        ("math500.json", b"[{oops", "not valid JSON"),
    ],
)
def test_unreadable_sources_are_one_line(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    assert main(["prepare", "--out-dir", str(tmp_path / "out"), "--eval", f"math500={tmp_path / name}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {tmp_path / name}: {message}")


def test_an_out_dir_that_is_a_file_is_one_line(sources, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    assert main(["prepare", "--out-dir", str(tmp_path / "out"), "--eval", f"math500={sources / 'math500.jsonl'}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "File exists" in error
