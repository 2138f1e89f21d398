"""python -m lambda_grpo.data prepare: files in every format, the report, determinism, overlap, verl's reader."""

import hashlib
import json

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
