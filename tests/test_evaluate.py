"""python -m lambda_grpo.evaluate end to end with --backend hf on a tiny random model: results, samples, table,
resuming, refusing other settings, and verl checkpoints merged by verl's own merger."""

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from lambda_grpo.data.prepare import prepare
from lambda_grpo.evaluate import __main__ as cli
from lambda_grpo.evaluate import runner
from lambda_grpo.evaluate.results import RESULTS_NAME, SUPERSEDED_DIR, load_results, save_results
from lambda_grpo.evaluate.checkpoint import MERGED_DIR, actor_dir, is_hf_model_dir
from lambda_grpo.evaluate.generation import SamplingSettings, stop_token_ids
from lambda_grpo.evaluate.table import COLUMNS
from lambda_grpo.tiny_assets import ensure_tiny_assets

MATH500 = [
    {"problem": "What is $2+3$?", "answer": "5"},
    {"problem": "What is $4 \\cdot 2$?", "answer": "8"},
    {"problem": "What is $9-7$?", "answer": "2"},
]
GSM8K = [
    {"question": "Tom has 3 apples and eats 1. How many are left?", "answer": "3-1=2\n#### 2"},
    {"question": "Ann has 2 pens and buys 2 more. How many pens?", "answer": "2+2=4\n#### 4"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_tiny_assets(tmp_path_factory.mktemp("tiny")).model_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    sources = tmp_path_factory.mktemp("sources")
    (sources / "math500.jsonl").write_text("".join(json.dumps(row) + "\n" for row in MATH500))
    (sources / "gsm8k.jsonl").write_text("".join(json.dumps(row) + "\n" for row in GSM8K))
    out = tmp_path_factory.mktemp("data")
    prepare({}, {"math500": str(sources / "math500.jsonl"), "gsm8k_test": str(sources / "gsm8k.jsonl")}, out)
    return out


def _run_args(model, data_dir, out_dir, *extra):
    return [
        "run", "--model", str(model), "--data-dir", str(data_dir), "--out-dir", str(out_dir),
        "--method", "lambda_grpo", "--model-size", "qwen2_5_1_5b", "--backend", "hf", "--device", "cpu",
        "--max-tokens", "6", "--k", "2", "--temperature", "1.0", "--batch-size", "2", *extra,
    ]  # fmt: skip


def test_end_to_end_then_resume(model_dir, data_dir, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "eval"
    assert cli.main(_run_args(model_dir, data_dir, out_dir)) == 0

    results = json.loads((out_dir / RESULTS_NAME).read_text())
    assert results["settings"]["sampling"] == {"k": 2, "temperature": 1.0, "top_p": 0.95, "max_tokens": 6, "seed": 0}
    assert set(results["benchmarks"]) == {"math500", "gsm8k_test"}
    for name, problems in (("math500", 3), ("gsm8k_test", 2)):
        entry = results["benchmarks"][name]
        assert (entry["problems"], entry["k"], entry["metric"]) == (problems, 2, "avg@2")
        lines = [json.loads(line) for line in (out_dir / "samples" / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines) == problems and all(len(line["responses"]) == len(line["scores"]) == 2 for line in lines)
        accuracy = 100 * sum(line["accuracy"] for line in lines) / problems
        assert entry["accuracy"] == pytest.approx(accuracy)
        assert all(set(line["reasons"]) <= {"match", "mismatch", "no_answer", "timeout"} for line in lines)
        assert any(response for line in lines for response in line["responses"])  # sampling produced text
    gsm8k_lines = map(json.loads, (out_dir / "samples" / "gsm8k_test.jsonl").open())
    assert [line["ground_truth"] for line in gsm8k_lines] == ["2", "4"]

    markdown = (out_dir / "table.md").read_text().splitlines()
    assert markdown[0] == "| " + " | ".join(COLUMNS) + " |" and len(COLUMNS) == 11
    assert markdown[2].startswith("| Qwen2.5-1.5B | λ-GRPO | ")
    rows = list(csv.reader((out_dir / "table.csv").open()))
    assert len(rows) == 2 and len(rows[1]) == 11
    assert float(rows[1][2]) == pytest.approx(results["benchmarks"]["math500"]["accuracy"], abs=0.05)
    assert rows[1][3] == ""  # AIME24 not evaluated

    # Resuming: finished benchmarks are skipped and no model is loaded.
    capsys.readouterr()
    monkeypatch.setattr(cli, "_load_generator", lambda *args: pytest.fail("loaded a model for finished work"))
    assert cli.main(_run_args(model_dir, data_dir, out_dir)) == 0
    assert capsys.readouterr().out.count("done in an earlier run, skipped") == 2

    # A benchmark missing from results.json (an interrupted run) is redone, and only that one.
    monkeypatch.undo()
    del results["benchmarks"]["gsm8k_test"]
    (out_dir / RESULTS_NAME).write_text(json.dumps(results))
    done = []
    real = runner.evaluate_benchmark
    monkeypatch.setattr(runner, "evaluate_benchmark", lambda name, *args: done.append(name) or real(name, *args))
    assert cli.main(_run_args(model_dir, data_dir, out_dir)) == 0
    assert done == ["gsm8k_test"]

    # Other settings on the same out-dir are refused.
    assert cli.main(_run_args(model_dir, data_dir, out_dir, "--seed", "1")) == 2
    assert "holds results for other settings" in capsys.readouterr().err


def _save_fsdp_checkpoint(model, run_dir, step):
    """A world-size-1 FSDP actor checkpoint laid out as verl saves it, and the run's latest-step marker."""
    actor = run_dir / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    for file in Path(model.name_or_path).iterdir():
        if file.is_file() and not file.name.endswith(".safetensors"):
            shutil.copy(file, actor / "huggingface" / file.name)
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    (run_dir / "latest_checkpointed_iteration.txt").write_text(str(step))
    return actor


def test_verl_checkpoints_are_merged_and_results_keyed_by_the_resolved_step(model_dir, data_dir, tmp_path, capsys):
    """A run directory is evaluated at its latest step, merged by verl's merger; after training advanced, the
    same command evaluates the new step (the earlier results are set aside, not reported as done)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    run_dir = tmp_path / "ckpt"
    actor = _save_fsdp_checkpoint(model, run_dir, 3)
    assert actor_dir(run_dir) == actor

    out_dir = tmp_path / "eval"
    args = _run_args(run_dir, data_dir, out_dir, "--benchmarks", "math500", "--dtype", "float32")
    assert cli.main(args) == 0
    merged = out_dir / MERGED_DIR
    assert is_hf_model_dir(merged)
    merged_state = AutoModelForCausalLM.from_pretrained(merged).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(merged_state[name].float(), tensor.bfloat16().float()), name  # verl merges to bf16
    results = json.loads((out_dir / RESULTS_NAME).read_text())
    assert (results["settings"]["model"], results["settings"]["step"]) == (str(actor.resolve()), 3)
    assert set(results["benchmarks"]) == {"math500"}

    with torch.no_grad():  # training advanced: a different model at step 6
        for parameter in model.parameters():
            parameter.mul_(0.5)
    _save_fsdp_checkpoint(model, run_dir, 6)
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "done in an earlier run" not in capsys.readouterr().out
    results = json.loads((out_dir / RESULTS_NAME).read_text())
    assert results["settings"]["step"] == 6 and set(results["benchmarks"]) == {"math500"}
    merged_state = AutoModelForCausalLM.from_pretrained(out_dir / MERGED_DIR).state_dict()
    name, tensor = next(iter(model.state_dict().items()))
    assert torch.equal(merged_state[name].float(), tensor.bfloat16().float())
    earlier = out_dir / SUPERSEDED_DIR / "global_step_3"
    assert json.loads((earlier / RESULTS_NAME).read_text())["settings"]["step"] == 3
    assert (earlier / "samples" / "math500.jsonl").is_file() and is_hf_model_dir(earlier / MERGED_DIR)


def test_generated_responses_survive_a_scoring_failure(model_dir, data_dir, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "eval"
    args = _run_args(model_dir, data_dir, out_dir, "--benchmarks", "math500")

    def broken_reward(*args, **kwargs):
        raise RuntimeError("reward workers cannot start")

    monkeypatch.setattr(runner, "compute_score", broken_reward)
    assert cli.main(args) == 1
    error = capsys.readouterr().err  # progress bars, then the message
    assert "Traceback" not in error
    assert error.splitlines()[-1].startswith("error: math500: scoring failed (RuntimeError: reward workers cannot")
    lines = [json.loads(line) for line in (out_dir / "samples" / "math500.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(len(line["responses"]) == 2 and "scores" not in line for line in lines)
    assert json.loads((out_dir / RESULTS_NAME).read_text())["generated"] == ["math500"]

    monkeypatch.undo()
    monkeypatch.setattr(cli, "_load_generator", lambda *args: pytest.fail("generated again"))
    assert cli.main(args) == 0
    assert "scoring the responses an earlier run generated" in capsys.readouterr().out
    rescored = [json.loads(line) for line in (out_dir / "samples" / "math500.jsonl").read_text().splitlines()]
    assert [line["responses"] for line in rescored] == [line["responses"] for line in lines]
    assert all(len(line["scores"]) == 2 for line in rescored)
    results = json.loads((out_dir / RESULTS_NAME).read_text())
    assert set(results["benchmarks"]) == {"math500"} and results["generated"] == []
    umask = os.umask(0)
    os.umask(umask)
    for output in (out_dir / RESULTS_NAME, out_dir / "samples" / "math500.jsonl", out_dir / "table.md"):
        assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~umask


def test_table_command_merges_runs_in_paper_order(tmp_path, capsys):
    def results(method, size, accuracies):
        path = tmp_path / f"{method}-{size}.json"
        benchmarks = {name: {"accuracy": value} for name, value in accuracies.items()}
        path.write_text(json.dumps({"settings": {"method": method, "model_size": size}, "benchmarks": benchmarks}))
        return str(path)

    suite = ["math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench", "gsm8k_test", "college_math"]
    full = {name: 10.0 * (i + 1) for i, name in enumerate(suite)}
    files = [
        results("lambda_grpo", "qwen2_5_7b", full),
        results("grpo", "qwen2_5_7b", {**full, "math500": 70.0}),
        results("lambda_grpo", "qwen2_5_1_5b", {"math500": 50.0, "gsm8k_test": 70.0}),
    ]
    assert cli.main(["table", *files, "--out", str(tmp_path / "table")]) == 0
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert [line.split(" | ")[:2] for line in lines[2:5]] == [
        ["| Qwen2.5-1.5B", "λ-GRPO"],
        ["| Qwen2.5-7B", "GRPO"],
        ["| Qwen2.5-7B", "λ-GRPO"],
    ]
    assert lines[2].endswith("| 60.0* |") and "– | – |" in lines[2]
    assert lines[4].endswith("| 45.0 |")
    assert "Qwen2.5-1.5B λ-GRPO lacks AIME24, AIME25, AMC23, Minerva, OlympiadBench, College Math" in lines[-1]
    rows = list(csv.reader((tmp_path / "table.csv").open()))
    assert rows[0] == list(COLUMNS) and rows[3][2:] == [f"{v:.1f}" for v in full.values()] + ["45.0"]

    duplicate = results("grpo", "qwen2_5_7b", full)
    assert cli.main(["table", *files, duplicate, "--out", str(tmp_path / "again")]) == 2
    assert "several results" in capsys.readouterr().err


def test_benchmark_selection_errors(data_dir, tmp_path, capsys):
    assert cli.main(_run_args(tmp_path / "m", data_dir, tmp_path / "o", "--benchmarks", "math500,aime24")) == 2
    assert "no aime24.parquet" in capsys.readouterr().err
    assert cli.main(_run_args(tmp_path / "m", data_dir, tmp_path / "o", "--benchmarks", "math")) == 2
    assert "unknown benchmarks ['math']" in capsys.readouterr().err
    assert cli.main(_run_args(tmp_path / "not_a_model", data_dir, tmp_path / "o")) == 2
    assert "neither an HF model directory" in capsys.readouterr().err


def test_sampling_settings_and_stop_tokens(model_dir):
    from transformers import AutoTokenizer

    assert SamplingSettings(1, 0.0, 1.0, 16, 0).metric == "pass@1"
    assert SamplingSettings(4, 0.6, 0.95, 16, 0).metric == "avg@4"
    with pytest.raises(ValueError, match="identical"):
        SamplingSettings(4, 0.0, 1.0, 16, 0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(1, 0.5, 0.0, 16, 0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer, model_dir)


def test_load_results_resumes_supersedes_or_refuses(tmp_path, capsys):
    def settings(step, run_dir="/runs/a", seed=0):
        return {"model": f"{run_dir}/global_step_{step}/actor", "step": step, "run_dir": run_dir, "seed": seed}

    out_dir = tmp_path / "eval"
    assert load_results(out_dir, settings(3)) == {"settings": settings(3), "benchmarks": {}, "generated": []}
    for step in (3, 6):
        save_results(out_dir, {"settings": settings(step), "benchmarks": {"math500": {"accuracy": 1.0}}})
        (out_dir / "samples").mkdir(exist_ok=True)
        assert load_results(out_dir, settings(step))["benchmarks"] == {"math500": {"accuracy": 1.0}}  # resumes
        assert load_results(out_dir, settings(9))["benchmarks"] == {}  # another step of the run: set aside
    assert sorted(path.name for path in (out_dir / SUPERSEDED_DIR).iterdir()) == ["global_step_3", "global_step_6"]
    assert "/runs/a is now at global_step_9; the results of global_step_6 moved to" in capsys.readouterr().out
    save_results(out_dir, {"settings": settings(3), "benchmarks": {}})
    load_results(out_dir, settings(9))
    assert (out_dir / SUPERSEDED_DIR / "global_step_3-2" / RESULTS_NAME).is_file()  # nothing overwritten

    save_results(out_dir, {"settings": settings(3), "benchmarks": {}})
    for other in (settings(3, seed=1), settings(6, run_dir="/runs/b"), {"model": "/hf/qwen", "step": None}):
        with pytest.raises(ValueError, match="holds results for other settings"):
            load_results(out_dir, other)
    (out_dir / RESULTS_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="is not a results file of this tool"):
        load_results(out_dir, settings(3))
