"""Config composition on verl's tree, precedence, packaging, and every start-up validation error."""

import importlib.metadata
import importlib.resources
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lambda_grpo import config as config_module
from lambda_grpo.config import (
    ConfigError,
    compose,
    compose_with_choices,
    lambda_options,
    policy_surrogate,
    validate,
    weight_options,
)
from lambda_grpo.surrogates import SURROGATES

from startup_helpers import run_inputs

SIZES = ["qwen2_5_1_5b", "qwen2_5_3b", "qwen2_5_7b"]
ALGOS = {"lambda_grpo": "lambda", "grpo": "grpo", "dapo": "dapo", "dr_grpo": "dr_grpo"}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """A train file that fills one batch (1024 prompts), a val file and a checkpoint dir, in a temp folder."""
    return run_inputs(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("size", SIZES)
def test_every_size_and_algo_composes_and_passes_verl_validation(size, algo, data_files):
    cfg, choices = compose_with_choices([f"model_size={size}", f"algo={algo}", *data_files])
    assert validate(cfg, choices=choices) == []  # ours, then verl 0.9.1's validate_config; nothing to warn about
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
        (["model_size=tiny_cpu", "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora.merge=false"],
         "actor_rollout_ref.model.lora.merge"),
        (["actor_rollout_ref.model.lora_rank=-1"], "actor_rollout_ref.model.lora_rank"),
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
    ["model_size=tiny_cpu", "trainer.v1.trainer_mode=colocate_async", "actor_rollout_ref.model.lora_rank=8"],
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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo=gspo"], "algo: no option 'gspo' (no algo/gspo.yaml); choose one of dapo, dr_grpo, grpo, lambda_grpo"),
        (["model_size=qwen3_8b"], "model_size: no option 'qwen3_8b' (no model_size/qwen3_8b.yaml); choose one of "
                                  "qwen2_5_1_5b, qwen2_5_3b, qwen2_5_7b, tiny_cpu"),
        (["trainer.nnode=2"], "trainer.nnode: no such key; did you mean trainer.nnodes? (a new key needs a leading +, "
                              "e.g. +trainer.nnode=...)"),
        (["tranier.nnodes=2"], "tranier.nnodes: no such key; did you mean trainer.nnodes?"),
        (["+trainer.nnodes=2"], "trainer.nnodes: exists already, so set it without the leading + (trainer.nnodes=...)"),
        (["trainer.nnodes"], "trainer.nnodes: cannot parse 'trainer.nnodes' (Error parsing override 'trainer.nnodes'; "
                             "missing EQUAL at '<EOF>'); write key=value"),
        (["algo=dapo", "lambda_grpo.lambda_bounds=[1,"], "lambda_grpo.lambda_bounds: cannot parse "
                                                         "'lambda_grpo.lambda_bounds=[1,'"),
    ],
)
def test_overrides_that_do_not_compose_are_one_line_naming_the_key(overrides, message):
    """Hydra's own messages run over several lines and advise a + for a misspelt key."""
    with pytest.raises(ConfigError) as error:
        compose(overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


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
    data = [override for override in data_files if not override.startswith("trainer.default_local_dir=")]
    with pytest.raises(ConfigError, match="^trainer.default_local_dir: checkpoints/lambda_grpo/.* is relative"):
        validate(compose(data))
    validate(compose(data_files))  # absolute


def test_configs_beside_the_imported_code_win_over_the_installed_copy(tmp_path):
    """A Ray job runs an uploaded copy of the repository: its configs, not the installed ones, must apply."""
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


# ----------------------------------------------------------------------------------------------
# Issue 14 §2: every bad value is one line naming the key, the value and the fix, before Ray starts.

BAD_VALUES = [
    # non-numeric numbers
    (["lambda_grpo.r=abc"], "lambda_grpo.r: must be a number (got the string 'abc'", "write e.g. lambda_grpo.r="),
    (["lambda_grpo.lambda_lr=1/100"], "lambda_grpo.lambda_lr: must be a number (got the string '1/100'",
     "(a decimal, not a fraction)"),
    (["data.train_batch_size=many"], "data.train_batch_size: must be a whole number (got the string 'many'",
     "write e.g. data.train_batch_size=1024"),
    (["actor_rollout_ref.actor.clip_ratio=wide"], "actor_rollout_ref.actor.clip_ratio: must be a number (got the str",
     "write e.g. actor_rollout_ref.actor.clip_ratio=0.2"),
    # lambda_bounds of the wrong shape
    (["lambda_grpo.lambda_bounds=5"], "lambda_grpo.lambda_bounds: must be two numbers [low, high] (got 5",
     "write e.g. lambda_grpo.lambda_bounds=[-10,10]"),
    (["lambda_grpo.lambda_bounds=[-1,0,1]"], "lambda_grpo.lambda_bounds: must be two numbers [low, high] (got [-1, 0,",
     "write e.g. lambda_grpo.lambda_bounds=[-10,10]"),
    # zero counts that divide
    (["actor_rollout_ref.actor.ppo_mini_batch_size=0"], "actor_rollout_ref.actor.ppo_mini_batch_size: must be >= 1 (",
     "write e.g. actor_rollout_ref.actor.ppo_mini_batch_size=256"),
    (["trainer.nnodes=0"], "trainer.nnodes: must be >= 1 (got 0", "write e.g. trainer.nnodes=1"),
    (["trainer.n_gpus_per_node=0"], "trainer.n_gpus_per_node: must be >= 1 (got 0", "write e.g. trainer.n_gpus_per"),
    # rollout.n=0 is rollout.n's fault, not lambda_grpo.r's
    (["actor_rollout_ref.rollout.n=0"], "actor_rollout_ref.rollout.n: must be >= 1 (got 0",
     "write e.g. actor_rollout_ref.rollout.n=8"),
    # booleans given words (bool('no') is True)
    (["lambda_grpo.lambda_trainable=no"], "lambda_grpo.lambda_trainable: must be true or false (got the string 'no')",
     "write lambda_grpo.lambda_trainable=false, unquoted"),
    (["lambda_grpo.lambda_follow_lr_schedule='false'"],
     "lambda_grpo.lambda_follow_lr_schedule: must be true or false (got the string 'false')", "=false, unquoted"),
    (["actor_rollout_ref.actor.use_kl_loss=no"], "actor_rollout_ref.actor.use_kl_loss: must be true or false",
     "write actor_rollout_ref.actor.use_kl_loss=false, unquoted"),
    (["trainer.val_before_train='false'"], "trainer.val_before_train: must be true or false", "=false, unquoted"),
    # a negative learning rate
    (["actor_rollout_ref.actor.optim.lr=-1e-6"], "actor_rollout_ref.actor.optim.lr: must be >= 0 (got -1e-06",
     "write e.g. actor_rollout_ref.actor.optim.lr=1e-06"),
    # unknown keys
    (["+lambda_grpo.lamda_lr=0.1"], "lambda_grpo.lamda_lr: unknown key, the lambda_grpo node has no 'lamda_lr'",
     "did you mean lambda_grpo.lambda_lr?"),
    (["+actor_rollout_ref.actor.clip_ratio_hgh=0.3"], "actor_rollout_ref.actor.clip_ratio_hgh: unknown key",
     "did you mean actor_rollout_ref.actor.clip_ratio_high?"),
    # r = 0 makes λ meaningless
    (["lambda_grpo.r=0"], "lambda_grpo.r: 0 makes h_i = 1 + r·z_i = 1 for every response", "or algo=dapo"),
    # an interpolation that does not resolve (verl resolves the config only inside Ray)
    (["data.max_prompt_length=${nowhere}"], "data.max_prompt_length: Interpolation key 'nowhere' not found", ""),
    # non-finite numbers
    (["lambda_grpo.lambda_init=nan"], "lambda_grpo.lambda_init: must be finite (got nan", "write e.g."),
]


@pytest.mark.parametrize(("overrides", "start", "fix"), BAD_VALUES, ids=[" ".join(o) for o, _, _ in BAD_VALUES])
def test_bad_values_are_one_line_naming_key_value_and_fix(overrides, start, fix, data_files):
    with pytest.raises(ConfigError) as error:
        validate(compose([*overrides, *data_files]))
    message = str(error.value)
    assert message.startswith(start), message
    assert fix in message and "\n" not in message, message


@pytest.mark.parametrize("algo", ["grpo", "dapo", "dr_grpo"])
def test_lambda_options_under_another_algo_warn(algo, data_files):
    overrides = [f"algo={algo}", "lambda_grpo.lambda_lr=0.5", "lambda_grpo.r=0.05", *data_files]
    cfg, choices = compose_with_choices(overrides)
    assert validate(cfg, choices=choices) == [
        f"lambda_grpo.{name}={value} has no effect with lambda_grpo.scheme={algo} (only the lambda scheme has z, h "
        "and λ); drop it, or use algo=lambda_grpo" for name, value in (("r", 0.05), ("lambda_lr", 0.5))]
    cfg, choices = compose_with_choices([f"algo={algo}", "lambda_grpo.r=0", *data_files])
    assert validate(cfg, choices=choices)[0].startswith("lambda_grpo.r=0 has no effect")  # no error: r is unused


@pytest.mark.parametrize(
    ("override", "warning"),
    [("actor_rollout_ref.actor.optim.lr=0", "actor_rollout_ref.actor.optim.lr=0: the policy never changes"),
     ("lambda_grpo.lambda_lr=0", "lambda_grpo.lambda_lr=0: λ never moves although lambda_trainable=true"),
     ("actor_rollout_ref.rollout.temperature=0", "actor_rollout_ref.rollout.temperature=0: greedy sampling")],
)
def test_legal_but_pointless_values_warn(override, warning, data_files):
    (message,) = validate(compose([override, *data_files]))
    assert message.startswith(warning)
