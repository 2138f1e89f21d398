"""lambda_grpo.plots: the series read from verl's own file and tensorboard loggers, and the PNGs drawn from them."""

import pytest

from lambda_grpo.plots import figures, main, read_run

# Two synthetic runs, as {step: {metric: value}}; only the λ-GRPO run logs actor/lambda.
LAMBDA_RUN = {
    step: {
        "actor/lambda": 0.01 * step,
        "response_length/mean": 100.0 + 5 * step,
        "actor/entropy": 1.0 - 0.05 * step,
        "critic/score/mean": 0.1 * step,
        "timing_s/step": 3.0,
        **({"val-core/math500/acc/mean@1": 0.2 + 0.01 * step, "val-aux/math500/reward/mean@1": 0.5} if step % 2
           else {}),
    }
    for step in range(1, 6)
}
GRPO_RUN = {
    step: {
        "response_length/mean": 90.0 + 2 * step,
        "actor/entropy": 0.9,
        "critic/score/mean": 0.08 * step,
        **({"val-core/math500/acc/mean@1": 0.15 + 0.01 * step} if step % 2 else {}),
    }
    for step in range(1, 6)
}


def _expected(run, metric):
    return [(step, data[metric]) for step, data in sorted(run.items()) if metric in data]


@pytest.fixture()
def logs(tmp_path, monkeypatch):
    """LAMBDA_RUN through verl's FileLogger (JSONL), GRPO_RUN through verl's tensorboard adapter."""
    from verl.utils.tracking import FileLogger, _TensorboardAdapter

    jsonl = tmp_path / "lambda_grpo-tiny.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(jsonl))
    file_logger = FileLogger("lambda_grpo", "lambda_grpo-tiny")
    for step, data in LAMBDA_RUN.items():
        file_logger.log({**data, "note": "a string, skipped"}, step)
    file_logger.finish()

    tensorboard_dir = tmp_path / "tensorboard"
    monkeypatch.setenv("TENSORBOARD_DIR", str(tensorboard_dir))
    tensorboard = _TensorboardAdapter("lambda_grpo", "grpo-tiny")
    for step, data in GRPO_RUN.items():
        tensorboard.log(data, step)
    tensorboard.finish()
    return jsonl, tensorboard_dir


def test_series_match_what_verl_logged(logs):
    jsonl, tensorboard_dir = logs
    lambda_run, grpo_run = read_run([jsonl]), read_run([tensorboard_dir])
    for metric in ("actor/lambda", "response_length/mean", "val-core/math500/acc/mean@1"):
        assert lambda_run[metric] == _expected(LAMBDA_RUN, metric)
    assert "note" not in lambda_run
    for metric in ("critic/score/mean", "val-core/math500/acc/mean@1"):
        steps, values = zip(*grpo_run[metric], strict=True)
        expected_steps, expected_values = zip(*_expected(GRPO_RUN, metric), strict=True)
        assert steps == expected_steps
        assert values == pytest.approx(expected_values, rel=1e-6)  # tensorboard stores float32


def test_figures_pick_the_quantities_and_leave_runs_without_a_metric_out(logs):
    jsonl, tensorboard_dir = logs
    runs = {"λ-GRPO": read_run([jsonl]), "GRPO": read_run([tensorboard_dir])}
    drawn = {figure.name: figure for figure in figures(runs)}
    assert set(drawn) == {"lambda", "response_length", "entropy", "reward", "val_math500"}
    assert list(drawn["lambda"].lines) == ["λ-GRPO"]
    assert list(drawn["reward"].lines) == ["λ-GRPO", "GRPO"]
    assert drawn["val_math500"].lines["λ-GRPO"] == _expected(LAMBDA_RUN, "val-core/math500/acc/mean@1")
    assert drawn["entropy"].lines["λ-GRPO"] == _expected(LAMBDA_RUN, "actor/entropy")


def test_cli_writes_one_png_per_quantity(logs, tmp_path, capsys):
    jsonl, tensorboard_dir = logs
    out_dir = tmp_path / "plots"
    assert main(["--out-dir", str(out_dir), "--run", f"lambda_grpo={jsonl}", "--run", f"grpo={tensorboard_dir}"]) == 0
    pngs = sorted(path.name for path in out_dir.glob("*.png"))
    assert pngs == ["entropy.png", "lambda.png", "response_length.png", "reward.png", "val_math500.png"]
    for name in pngs:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out_dir / name).stat().st_size > 1000
    assert "no actor/lambda in: grpo" in capsys.readouterr().out


def test_resumed_run_files_merge_with_the_later_file_winning(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"step": 1, "data": {"actor/lambda": 0.1}}\n{"step": 2, "data": {"actor/lambda": 0.2}}\n')
    second.write_text('{"step": 2, "data": {"actor/lambda": 0.25}}\n{"step": 3, "data": {"actor/lambda": 0.3}}\n')
    assert read_run([first, second])["actor/lambda"] == [(1, 0.1), (2, 0.25), (3, 0.3)]


def test_a_metrics_folder_is_its_files_in_start_time_order(tmp_path):
    """`python -m lambda_grpo.main` logs each start to <checkpoint dir>/metrics/<start time>.jsonl."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "20261126-101500.jsonl").write_text('{"step": 4, "data": {"actor/lambda": 0.4}}\n')
    (folder / "20261126-090000.jsonl").write_text(
        '{"step": 3, "data": {"actor/lambda": 0.3}}\n{"step": 4, "data": {"actor/lambda": -1.0}}\n')
    assert read_run([folder])["actor/lambda"] == [(3, 0.3), (4, 0.4)]


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "data": {}}\n{"oops": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not a verl file-logger line"):
        read_run([bad])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_run([tmp_path / "missing.jsonl"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no verl metrics"):
        read_run([empty])


def _bad_inputs(tmp_path, logs):
    """(run path, expected start of the error) for each kind of bad input."""
    jsonl, tensorboard_dir = logs
    (tmp_path / "empty").mkdir()
    (tmp_path / "mid.jsonl").write_text('{"step": 1, "data": {"actor/lambda": 1}}\n{"oops": 1}\n{"step": 3}\n')
    (tmp_path / "list.jsonl").write_text('{"step": 1, "data": [1, 2]}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "other.jsonl").write_text('{"step": 1, "data": {"loss": 1.0, "actor/lamda": 0.1}}\n')
    corrupt = tmp_path / "corrupt_tb"
    corrupt.mkdir()
    event_file = next(tensorboard_dir.glob("events.out.tfevents.*"))
    data = bytearray(event_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle
    (corrupt / event_file.name).write_bytes(bytes(data))
    (tmp_path / "garbage_tb").mkdir()
    (tmp_path / "garbage_tb" / "events.out.tfevents.1.host").write_bytes(b"not an event file at all")
    return {
        "missing": (tmp_path / "missing", "training log not found"),
        "folder without logs": (tmp_path / "empty", "no verl metrics (*.jsonl) or tensorboard"),
        "corrupt jsonl line": (tmp_path / "mid.jsonl", "mid.jsonl:2: not a verl file-logger line"),
        "data not an object": (tmp_path / "list.jsonl", "list.jsonl:1: not a verl file-logger line"),
        "empty jsonl": (tmp_path / "empty.jsonl", "run 'r' ("),
        "unknown metrics": (tmp_path / "other.jsonl", "run 'r' ("),
        "corrupt tensorboard": (corrupt, "not a readable tensorboard event file"),
        "garbage tensorboard": (tmp_path / "garbage_tb", "not a readable tensorboard event file"),
    }


BAD_INPUTS = [
    "missing", "folder without logs", "corrupt jsonl line", "data not an object", "empty jsonl", "unknown metrics",
    "corrupt tensorboard", "garbage tensorboard",
]  # fmt: skip


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_every_bad_input_is_one_line_and_a_non_zero_exit(kind, logs, tmp_path, capsys):
    path, expected = _bad_inputs(tmp_path, logs)[kind]
    assert main(["--out-dir", str(tmp_path / "plots"), "--run", f"r={path}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert expected in captured.err
    assert not any((tmp_path / "plots").glob("*.png"))


def test_a_run_with_unknown_metrics_lists_what_it_has(logs, tmp_path, capsys):
    jsonl, _ = logs
    path, _ = _bad_inputs(tmp_path, logs)["unknown metrics"]
    assert main(["--out-dir", str(tmp_path / "plots"), "--run", f"good={jsonl}", "--run", f"r={path}"]) == 2
    error = capsys.readouterr().err
    assert "run 'r' (" in error and "it has 2: actor/lamda, loss" in error and "good" not in error


def test_truncated_last_records_are_read_up_to_there(logs, tmp_path, capsys):
    """A run stopped while writing leaves a partial last JSONL line or tensorboard record: the rest is drawn."""
    jsonl, tensorboard_dir = logs
    partial = tmp_path / "partial.jsonl"
    partial.write_text(jsonl.read_text() + '{"step": 6, "data": {"actor/lam')
    assert read_run([partial])["actor/lambda"] == _expected(LAMBDA_RUN, "actor/lambda")
    assert "partial.jsonl:6: incomplete last line" in capsys.readouterr().out
    truncated = tmp_path / "truncated_tb"
    truncated.mkdir()
    event_file = next(tensorboard_dir.glob("events.out.tfevents.*"))
    (truncated / event_file.name).write_bytes(event_file.read_bytes()[:-7])
    steps = [step for step, _ in read_run([truncated])["critic/score/mean"]]
    assert steps == [step for step, _ in _expected(GRPO_RUN, "critic/score/mean")][: len(steps)] and len(steps) >= 4
