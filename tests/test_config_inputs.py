"""lambda_grpo.config_inputs: the files a config names are checked on this machine before Ray starts —
data files verl cannot read, model directories without config or weights, a missing reward function, an
unwritable checkpoint directory — each as one ConfigError naming the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambda_grpo.config import compose
from lambda_grpo.config_inputs import BUILTIN_REWARD_MANAGERS, check_inputs
from lambda_grpo.config_values import ConfigError
from lambda_grpo.tiny_assets import ensure_tiny_assets

from startup_helpers import run_inputs, write_rows


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """A train file that fills one batch (1024 prompts), a val file and a checkpoint dir, in a temp folder."""
    return run_inputs(tmp_path_factory.mktemp("data"))


def test_good_inputs_pass(data_files):
    check_inputs(compose(data_files))
    check_inputs(compose(["model_size=tiny_cpu"]))


def test_unwritable_checkpoint_dir(data_files, tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.default_local_dir: cannot create /proc/lambda_grpo/run \(/proc is "
                                          r"not writable: .*\); choose a writable checkpoint directory$"):
        check_inputs(compose([*data_files, "trainer.default_local_dir=/proc/lambda_grpo/run"]))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=f"^trainer.default_local_dir: {tmp_path}/file/run: {tmp_path}/file is a "):
        check_inputs(compose([*data_files, f"trainer.default_local_dir={tmp_path}/file/run"]))
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]  # the probe leaves nothing behind
    check_inputs(compose([*data_files, f"trainer.default_local_dir={tmp_path}/new/run"]))
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


def data_case(tmp_path, name: str) -> Path:
    """A data file that verl would fail on only after Ray started."""
    path = tmp_path / name
    if name == "empty.parquet":
        path.write_bytes(b"")
    elif name == "corrupt.parquet":
        path.write_bytes(b"PAR1" + b"\x00" * 100)
    elif name == "no_rows.parquet":
        write_rows(path, 0)
    elif name == "text_prompt.parquet":
        write_rows(path, 8, prompt="What is 1 + 1?")
    elif name == "no_ground_truth.parquet":
        write_rows(path, 8, reward_model={"style": "rule"})
    return path


@pytest.mark.parametrize(("name", "fragment"), [("empty.parquet", "is empty (0 bytes)"),
                                                ("corrupt.parquet", "is not a readable parquet file"),
                                                ("no_rows.parquet", "has no rows"),
                                                ("text_prompt.parquet", "holds string, verl expects chat messages"),
                                                ("no_ground_truth.parquet", "reward_model['ground_truth']")])
def test_data_files_verl_cannot_read_are_refused_before_ray(name, fragment, data_files, tmp_path):
    path = data_case(tmp_path, name)
    with pytest.raises(ConfigError) as error:
        check_inputs(compose([*data_files, f"data.val_files={path}"]))
    assert str(error.value).startswith(f"data.val_files: {path}") and fragment in str(error.value)


def test_data_columns_follow_prompt_key_and_the_reward_manager(data_files, tmp_path):
    path = write_rows(tmp_path / "t.parquet", 1024, question=[{"role": "user", "content": "1+1?"}])
    with pytest.raises(ConfigError, match=r"^data.train_files: .* has no column 'query' \(data.prompt_key\)"):
        check_inputs(compose([*data_files, f"data.train_files={path}", "data.prompt_key=query"]))
    check_inputs(compose([*data_files, f"data.train_files={path}", f"data.val_files={path}",
                          "data.prompt_key=question"]))
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": [{"role": "user", "content": "hi"}]}] * 1024), bare)
    with pytest.raises(ConfigError, match="has no column 'data_source'"):
        check_inputs(compose([*data_files, f"data.train_files={bare}"]))
    check_inputs(compose([*data_files, f"data.train_files={bare}", "reward.reward_manager.source=importlib"]))


def test_our_reward_manager_list_is_verls_registry():
    import verl.experimental.reward_loop.reward_manager  # noqa: F401  (registers the built-ins)
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

    assert set(REWARD_MANAGER) == set(BUILTIN_REWARD_MANAGERS)


def test_train_files_must_fill_one_batch(data_files, tmp_path):
    small = write_rows(tmp_path / "small.parquet", 100)
    with pytest.raises(ConfigError, match="^data.train_files: 100 usable rows, fewer than data.train_batch_size=1024"):
        check_inputs(compose([*data_files, f"data.train_files=[{small},{small}]", "data.train_max_samples=100"]))
    check_inputs(compose([*data_files, f"data.train_files=[{small},{small}]", "data.train_batch_size=200",
                      "actor_rollout_ref.actor.ppo_mini_batch_size=100"]))


def test_model_directories_without_config_or_weights_are_refused_before_ray(data_files, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(ensure_tiny_assets().model_dir, model)
    check_inputs(compose([*data_files, f"actor_rollout_ref.model.path={model}"]))
    (model / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=f"^actor_rollout_ref.model.path: {model} has no weights"):
        check_inputs(compose([*data_files, f"actor_rollout_ref.model.path={model}"]))
    (model / "config.json").unlink()
    with pytest.raises(ConfigError, match=f"^actor_rollout_ref.model.path: {model} has no config.json"):
        check_inputs(compose([*data_files, f"actor_rollout_ref.model.path={model}"]))


def test_a_missing_reward_function_is_refused_before_ray(data_files, tmp_path):
    with pytest.raises(ConfigError, match=f"^reward.custom_reward_function.path: {tmp_path}/reward.py does not exist"):
        check_inputs(compose([*data_files, f"reward.custom_reward_function.path={tmp_path}/reward.py"]))
    with pytest.raises(ConfigError, match="^reward.custom_reward_function.path: pkg://lambda_grpo.rewards: no module"):
        check_inputs(compose([*data_files, "reward.custom_reward_function.path=pkg://lambda_grpo.rewards"]))
