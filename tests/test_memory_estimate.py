"""The memory estimate: model shapes, its arithmetic, and the size files' headers that carry it."""

import json
from pathlib import Path

import pytest

from lambda_grpo.config import compose
from lambda_grpo.memory_estimate import KNOWN_SHAPES, ModelShape, _main, estimate_lines, model_shape

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model_size"
QWEN_SIZES = ["qwen2_5_1_5b", "qwen2_5_3b", "qwen2_5_7b"]


def header(path: Path) -> str:
    """The comment block a size file opens with."""
    return path.read_text().split("\n\n", 1)[0]


@pytest.mark.parametrize("model, params", [("Qwen/Qwen2.5-1.5B", 1_543_714_304), ("Qwen/Qwen2.5-3B", 3_085_938_688),
                                           ("Qwen/Qwen2.5-7B", 7_615_616_512)])
def test_shapes_give_the_published_parameter_counts(model, params):
    """The counts of the models' safetensors indexes (model cards: 1.54B, 3.09B, 7.61B)."""
    assert KNOWN_SHAPES[model].params == params


def test_shape_of_a_local_model_dir_is_read_from_its_config(tmp_path):
    config = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 64, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = model_shape(str(tmp_path))
    assert shape == ModelShape(100, 64, 128, 2, 1, 1, 64, False)
    # 2 embeddings + per layer (q, k, v with biases, o, MLP, 2 norms) + final norm.
    assert shape.params == 2 * 100 * 64 + 2 * (3 * (64 * 64 + 64) + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64
    with pytest.raises(ValueError, match="^actor_rollout_ref.model.path: Qwen/Qwen9-1B"):
        model_shape("Qwen/Qwen9-1B")


def test_arithmetic_of_the_7b_estimate_by_hand():
    lines = estimate_lines(compose(["model_size=qwen2_5_7b"]))
    p, v = 7_615_616_512, 152_064
    by_label = {line.split("  ")[0]: line for line in lines}
    assert by_label["actor state"].endswith(f"= {16 * p / 8 / 1e9:5.1f} GB")  # 15.2
    assert "offloaded between passes" in by_label["reference"]
    assert by_label["rollout"].endswith("=  48.0 GB")  # 0.6 × 80
    assert f"logits 2 B·V·T {2 * v * 16384 / 1e9:.1f}" in by_label["actor update"]
    assert f"chunked entropy 3·4 B·V·2,048 {3 * 4 * v * 2048 / 1e9:.1f}" in by_label["log-prob"]
    assert by_label["checkpoint"].endswith(f"= {12 * p / 1e9:5.1f} GB")  # 91.4
    assert by_label["disk per run"].endswith(f"= {2 * 12 * p / 1e9:5.1f} GB")
    assert by_label["peak"].endswith("GB of 80") and float(by_label["peak"].split("=")[-1].split()[0]) < 80


def test_unchunked_entropy_and_other_gpus_change_the_estimate():
    unchunked = estimate_lines(compose(["model_size=qwen2_5_1_5b",
                                        "actor_rollout_ref.actor.entropy_from_logits_with_chunking=false",
                                        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=65536"]))
    log_prob = next(line for line in unchunked if line.startswith("log-prob"))
    assert f"entropy 2·2 B·V·T {2 * 2 * 151_936 * 65536 / 1e9:.1f}" in log_prob  # the budget the issue flagged
    four = estimate_lines(compose(["model_size=qwen2_5_1_5b", "trainer.n_gpus_per_node=4"]), gpu_gb=40)
    assert "N = 4 GPUs of 40 GB" in four[0] and four[1].endswith(f"= {16 * 1_543_714_304 / 4 / 1e9:5.1f} GB")


@pytest.mark.parametrize("size", QWEN_SIZES)
def test_size_file_header_is_the_estimate_of_its_own_config(size):
    text = header(CONFIG_DIR / f"{size}.yaml")
    for line in estimate_lines(compose([f"model_size={size}"])):
        assert f"#   {line}\n" in text + "\n", (
            f"configs/model_size/{size}.yaml: header is stale; paste the output of "
            f"`python -m lambda_grpo.memory_estimate model_size={size}`. Missing: {line}")


def test_every_size_file_states_its_memory():
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert {f.stem for f in files} >= {*QWEN_SIZES, "tiny_cpu", "tiny_gpu"}
    for path in files:
        assert "Memory" in header(path), path.name


def test_cli_prints_the_estimate_and_names_a_bad_key(capsys):
    assert _main(["model_size=qwen2_5_3b"]) == 0
    assert capsys.readouterr().out.splitlines() == estimate_lines(compose(["model_size=qwen2_5_3b"]))
    assert _main(["model_size=qwen2_5_3b", "actor_rollout_ref.model.path=Org/Unknown"]) == 2
    assert "actor_rollout_ref.model.path: Org/Unknown" in capsys.readouterr().err
