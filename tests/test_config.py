"""Config composition on verl's tree, precedence, packaging, and every start-up validation error."""

import importlib.metadata
import importlib.resources
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lambda_grpo import config as config_module
from lambda_grpo.config import ConfigError, compose, lambda_options, policy_surrogate, validate, weight_options
from lambda_grpo.surrogates import SURROGATES

SIZES = ["qwen2_5_1_5b", "qwen2_5_3b", "qwen2_5_7b"]
ALGOS = {"lambda_grpo": "lambda", "grpo": "grpo", "dapo": "dapo", "dr_grpo": "dr_grpo"}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    for name in ("train.parquet", "test.parquet"):
        (folder / name).write_bytes(b"")
    return [f"data.train_files={folder / 'train.parquet'}", f"data.val_files={folder / 'test.parquet'}"]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("size", SIZES)
def test_every_size_and_algo_composes_and_passes_verl_validation(size, algo, data_files):
    cfg = compose([f"model_size={size}", f"algo={algo}", *data_files])
    validate(cfg)  # ours, then verl 0.9.1's validate_config
    assert cfg.lambda_grpo.scheme == ALGOS[algo]
    assert cfg.trainer.experiment_name == f"{algo}-{size}"
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "vanilla"
    assert cfg.actor_rollout_ref.model.path == {"qwen2_5_1_5b": "Qwen/Qwen2.5-1.5B", "qwen2_5_3b": "Qwen/Qwen2.5-3B",
                                                 "qwen2_5_7b": "Qwen/Qwen2.5-7B"}[size]
    optimizer = cfg.actor_rollout_ref.actor.optim
    if algo == "lambda_grpo":
        assert (optimizer.optimizer_impl, optimizer.optimizer) == ("lambda_grpo.learnable_lambda", "LambdaAdamW")
        assert OmegaConf.to_container(optimizer.override_optimizer_config, resolve=True)["lambda_lr"] == 0.01
    else:
        assert (optimizer.optimizer_impl, optimizer.optimizer) == ("torch.optim", "AdamW")


def test_precedence_verl_then_ours_then_size_then_algo_then_command_line(data_files):
    cfg = compose(["model_size=qwen2_5_7b", *data_files])
    assert cfg.actor_rollout_ref.actor.ppo_epochs == 1  # verl's default, untouched
    assert cfg.actor_rollout_ref.rollout.n == 8  # ours over verl's 1
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == 2  # the size file
    assert cfg.lambda_grpo.scheme == "lambda"  # the algo file (default algo=lambda_grpo)
    cli = compose(["model_size=qwen2_5_7b", "algo=lambda_grpo", "lambda_grpo.scheme=dapo",
                   "actor_rollout_ref.rollout.tensor_model_parallel_size=4", "lambda_grpo.lambda_lr=0.5", *data_files])
    assert cli.lambda_grpo.scheme == "dapo"
    assert cli.actor_rollout_ref.rollout.tensor_model_parallel_size == 4
    assert OmegaConf.to_container(cli.actor_rollout_ref.actor.optim.override_optimizer_config, resolve=True)[
        "lambda_lr"] == 0.5  # one place to set λ's options
    assert cli.trainer.experiment_name == "lambda_grpo-qwen2_5_7b"
    assert compose(["trainer.experiment_name=mine", *data_files]).trainer.experiment_name == "mine"


def _flat_keys(node, prefix=""):
    keys = set()
    for key, value in (node or {}).items():
        if key == "defaults":
            continue
        keys |= _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def test_global_group_files_set_disjoint_keys():
    """A key set by two `_global_` groups would be decided silently by their order in the defaults list."""
    groups = {}
    for group in ("platform", "model_size", "algo"):
        keys = set()
        for path in (CONFIG_DIR / group).glob("*.yaml"):
            keys |= _flat_keys(yaml.safe_load(path.read_text()))
        groups[group] = keys
    for first, second in (("platform", "algo"), ("model_size", "algo")):
        assert not groups[first] & groups[second], (first, second, groups[first] & groups[second])


def test_configs_are_shipped_in_the_package_and_the_wheel(tmp_path):
    shipped = importlib.resources.files("lambda_grpo.configs")
    assert (shipped / "lambda_grpo.yaml").is_file() and (shipped / "algo" / "lambda_grpo.yaml").is_file()
    import shutil

    root, source = Path(__file__).resolve().parents[1], tmp_path / "source"  # setuptools writes build/ in the source
    for folder in ("lambda_grpo", "configs"):
        shutil.copytree(root / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(root / file, source / file)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("lambda_grpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"lambda_grpo/configs/{p.relative_to(CONFIG_DIR)}" for p in CONFIG_DIR.rglob("*.yaml")}
    assert expected and expected <= names
    assert "lambda_grpo/weights.py" in names


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["actor_rollout_ref.rollout.n=1"], "actor_rollout_ref.rollout.n"),
        (["data.train_batch_size=1000"], "actor_rollout_ref.actor.ppo_mini_batch_size"),
        (["actor_rollout_ref.actor.ppo_mini_batch_size=6"], "actor_rollout_ref.actor.ppo_mini_batch_size"),
        (["trainer.n_gpus_per_node=7"], "actor_rollout_ref.actor.ppo_mini_batch_size"),
        (["lambda_grpo.lambda_lr=-0.1"], "lambda_grpo.lambda_lr"),
        (["lambda_grpo.lambda_init=11"], "lambda_grpo.lambda_init"),
        (["lambda_grpo.lambda_bounds=[1,-1]"], "lambda_grpo.lambda_bounds"),
        (["lambda_grpo.normalization=sum"], "lambda_grpo.normalization"),
        (["lambda_grpo.scheme=gspo"], "lambda_grpo.scheme"),
        (["lambda_grpo.r=0.9"], "lambda_grpo.r"),
        (["actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean"], "actor_rollout_ref.actor.loss_agg_mode"),
        (["actor_rollout_ref.actor.policy_loss.loss_mode=geo_mean"], "actor_rollout_ref.actor.policy_loss.loss_mode"),
        (["actor_rollout_ref.actor.policy_loss.loss_mode=bypass_mode"], "actor_rollout_ref.actor.policy_loss.loss_mode"),
        (["actor_rollout_ref.actor.policy_loss.loss_mode=my_plugin_loss"],
         "actor_rollout_ref.actor.policy_loss.loss_mode"),
        (["lambda_grpo.custom_surrogates=my_plugin_loss"], "lambda_grpo.custom_surrogates"),
        (["lambda_grpo.eps=0"], "lambda_grpo.eps"),
        (["lambda_grpo.eps=-1e-6"], "lambda_grpo.eps"),
        (["lambda_grpo.lambda_bounds=[-400,400]"], "lambda_grpo.lambda_bounds"),
        (["lambda_grpo.max_consecutive_skipped_steps=0"], "lambda_grpo.max_consecutive_skipped_steps"),
        (["actor_rollout_ref.actor.optim.optimizer_impl=torch.optim"], "actor_rollout_ref.actor.optim.optimizer"),
        (["actor_rollout_ref.actor.checkpoint.save_contents=[model]"], "actor_rollout_ref.actor.checkpoint.save_contents"),
        (["actor_rollout_ref.actor.ulysses_sequence_parallel_size=3"], "actor_rollout_ref.actor.ulysses_sequence_parallel_size"),
        (["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2", "actor_rollout_ref.model.use_remove_padding=false"],
         "actor_rollout_ref.model.use_remove_padding"),
        (["model_size=tiny_cpu", "actor_rollout_ref.actor.ulysses_sequence_parallel_size=1",
          "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=2", "trainer.n_gpus_per_node=2"],
         "actor_rollout_ref.model.use_remove_padding"),
        (["trainer.use_v1=false"], "trainer.use_v1"),
        (["trainer.v1.trainer_mode=fully_async"], "trainer.v1.trainer_mode"),
        (["model_size=tiny_cpu", "trainer.v1.trainer_mode=separate_async"], "trainer.v1.trainer_mode"),
        (["trainer.v1.trainer_mode=separate_async", "trainer.v1.separate_async.parameter_sync_step=2"],
         "trainer.v1.separate_async.parameter_sync_step"),
        (["trainer.v1.trainer_mode=separate_async"], "actor_rollout_ref.rollout.nnodes"),
        (["trainer.v1.trainer_mode=separate_async", "actor_rollout_ref.rollout.n_gpus_per_node=8",
          "actor_rollout_ref.rollout.nnodes=1"],
         "actor_rollout_ref.rollout.checkpoint_engine.backend"),
        (["algo=dr_grpo", "data.max_response_length=0"], "data.max_response_length"),
    ],
)
def test_startup_errors_name_the_key(overrides, key, data_files):
    with pytest.raises(ConfigError) as error:
        validate(compose([*overrides, *data_files]))
    assert str(error.value).startswith(key), str(error.value)


@pytest.mark.parametrize("overrides", [
    ["trainer.v1.trainer_mode=colocate_async"],
    ["model_size=tiny_cpu", "trainer.v1.trainer_mode=colocate_async"],
    ["model_size=qwen2_5_7b", "trainer.v1.trainer_mode=separate_async", "actor_rollout_ref.rollout.nnodes=1",
     "actor_rollout_ref.rollout.n_gpus_per_node=8", "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl"],
    # 1 prompt × 4 responses per mini-batch: 8 GPUs of Ulysses size 2 are 4 data-parallel groups, one response each
    ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2", "actor_rollout_ref.rollout.n=4",
     "actor_rollout_ref.actor.ppo_mini_batch_size=1", "data.train_batch_size=4"],
])
def test_trainer_modes_and_sequence_parallelism_are_accepted(overrides, data_files):
    validate(compose([*overrides, *data_files]))


def test_missing_and_nonexistent_paths(data_files, tmp_path):
    with pytest.raises(ConfigError, match="^data.train_files: required but not set"):
        validate(compose([]))
    with pytest.raises(ConfigError, match="^data.val_files: .*missing.parquet does not exist"):
        validate(compose([data_files[0], f"data.val_files={tmp_path / 'missing.parquet'}"]))
    with pytest.raises(ConfigError, match="^actor_rollout_ref.model.path: .*no-model does not exist"):
        validate(compose([*data_files, f"actor_rollout_ref.model.path={tmp_path / 'no-model'}"]))


def test_unknown_group_choices_name_the_group():
    with pytest.raises(ConfigError, match="Could not find 'algo/gspo'"):
        compose(["algo=gspo"])
    with pytest.raises(ConfigError, match="Could not find 'model_size/qwen3_8b'"):
        compose(["model_size=qwen3_8b"])


def test_other_verl_version_is_refused(monkeypatch, data_files):
    real_version = importlib.metadata.version
    monkeypatch.setattr(config_module.importlib.metadata, "version",
                        lambda name: "0.9.2" if name == "verl" else real_version(name))
    with pytest.raises(ConfigError, match="verl==0.9.2 is installed.*verl==0.9.1"):
        validate(compose(data_files))


def test_options_handed_to_the_loss_and_the_optimizer(data_files):
    cfg = compose(["algo=dr_grpo", "data.max_response_length=1500", "lambda_grpo.normalization=power", *data_files])
    options = weight_options(cfg)
    assert (options.scheme, options.max_response_length, options.normalization, options.max_group_size) == (
        "dr_grpo", 1500, "power", 8)
    assert lambda_options(cfg).bounds == (-10.0, 10.0)


def test_relative_checkpoint_dir_is_refused_inside_a_ray_job_with_an_uploaded_working_dir(monkeypatch, data_files):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}}')
    with pytest.raises(ConfigError, match="^trainer.default_local_dir: checkpoints/lambda_grpo/.* is relative"):
        validate(compose(data_files))
    validate(compose([*data_files, "trainer.default_local_dir=/shared/checkpoints/run"]))


def test_configs_beside_the_imported_code_win_over_the_installed_copy(tmp_path):
    """A Ray job runs an uploaded copy of the repository: its configs, not the installed ones, must apply."""
    import shutil

    root = CONFIG_DIR.parent
    shutil.copytree(root / "lambda_grpo", tmp_path / "lambda_grpo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(CONFIG_DIR, tmp_path / "configs", ignore=shutil.ignore_patterns("__pycache__"))
    primary = tmp_path / "configs" / "lambda_grpo.yaml"
    primary.write_text(primary.read_text().replace("    n: 8\n", "    n: 6\n"))
    code = "from lambda_grpo.config import compose; print(compose([]).actor_rollout_ref.rollout.n)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "6"


@pytest.mark.parametrize("loss_mode", sorted(SURROGATES))
def test_every_verified_surrogate_starts_with_every_algo(loss_mode, data_files):
    for algo in ALGOS:
        cfg = compose([f"algo={algo}", f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}",
                       "actor_rollout_ref.actor.policy_loss.dro_beta=0.1", *data_files])
        validate(cfg)
        assert policy_surrogate(cfg) is SURROGATES[loss_mode]


def test_refusals_say_why_and_a_listed_custom_surrogate_starts(data_files):
    with pytest.raises(ConfigError, match="geo_mean.*torch.mean"):
        validate(compose(["actor_rollout_ref.actor.policy_loss.loss_mode=geo_mean", *data_files]))
    with pytest.raises(ConfigError, match="overflow float32 .* ±269"):
        validate(compose(["lambda_grpo.lambda_bounds=[-400,400]", *data_files]))
    cfg = compose(["actor_rollout_ref.actor.policy_loss.loss_mode=my_plugin_loss",
                   "lambda_grpo.custom_surrogates=[my_plugin_loss]", *data_files])
    assert policy_surrogate(cfg).loss_mode == "my_plugin_loss"
