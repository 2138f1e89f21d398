"""The files a training config names, checked on this machine before Ray starts (`check_inputs`).

- `data.train_files` / `data.val_files`: each local file opens as verl's RLHFDataset would and has the
  columns verl reads (`input_files.inspect_data_file`): the prompt column `data.prompt_key`, and, for
  verl's built-in reward managers, `data_source` and `reward_model.ground_truth`; the train files fill
  at least one `data.train_batch_size` (verl drops the incomplete batch). With a custom dataset class
  (`data.custom_cls.path`) only their existence is checked; remote paths (`hdfs://...`) not at all.
- `actor_rollout_ref.model.path` (and `hf_config_path`, `tokenizer_path`), and
  `reward.reward_model.model_path` when a reward model is enabled: a local directory has a config,
  weights and a tokenizer (`input_files.check_model_dir`); hub ids are left to the hub.
- `reward.custom_reward_function.path`: the file exists, or the `pkg://` module is importable.
- `trainer.default_local_dir`: can be created and written here (a probe directory, removed again).

Each failure is a ConfigError naming the key.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from lambda_grpo.config_values import ConfigError, read
from lambda_grpo.input_files import DataColumns, InputProblem, check_model_dir, check_tokenizer_dir, inspect_data_file

DATA_KEYS = ("data.train_files", "data.val_files")

BUILTIN_REWARD_MANAGERS = ("dapo", "gdpo", "naive", "rate_limited", "remote")
"""verl 0.9.1's registered reward-loop managers; each reads `data_source` and `reward_model["ground_truth"]`."""


def check_inputs(cfg: DictConfig) -> None:
    """Every input file and directory the config names is usable here; raises ConfigError naming the key."""
    _check_data_files(cfg)
    _check_models(cfg)
    _check_reward_function(cfg)
    _check_checkpoint_dir_writable(cfg)


def _check_data_files(cfg: DictConfig) -> None:
    """Each local data file opens and has the columns verl reads; the train files fill one batch."""
    custom_dataset = OmegaConf.select(cfg, "data.custom_cls.path")
    manager = cfg.reward.reward_manager
    columns = DataColumns(prompt=str(cfg.data.prompt_key),
                          reward=manager.source == "register" and manager.name in BUILTIN_REWARD_MANAGERS)
    for key in DATA_KEYS:
        total: int | None = 0
        for path in _paths(cfg, key):
            if not _is_local(path) or custom_dataset:  # remote (verl copies it), or read by the user's class
                if _is_local(path) and not os.path.exists(os.path.expanduser(path)):
                    raise ConfigError(f"{key}: {path} does not exist")
                total = None
                continue
            try:
                rows = inspect_data_file(path, columns).rows
            except InputProblem as problem:
                raise ConfigError(f"{key}: {problem}") from None
            total = None if total is None or rows is None else total + rows
        if key == "data.train_files" and total is not None:
            _check_train_rows(cfg, total)


def _check_train_rows(cfg: DictConfig, rows: int) -> None:
    limit = int(cfg.data.get("train_max_samples", -1) or -1)
    usable, batch = (min(rows, limit) if limit > 0 else rows), read(cfg, "data.train_batch_size")
    if usable < batch:
        raise ConfigError(
            f"data.train_files: {usable} usable rows, fewer than data.train_batch_size={batch}: verl drops the "
            "incomplete batch and would train 0 steps; lower data.train_batch_size or add data"
        )


def _check_models(cfg: DictConfig) -> None:
    """Local model directories have a config, weights and a tokenizer (hub ids are left to the hub)."""
    model = cfg.actor_rollout_ref.model
    _check_local_dir("actor_rollout_ref.model.path", model.path,
                     lambda path: check_model_dir(path, model.get("hf_config_path")))
    tokenizer_key = f"actor_rollout_ref.model.{'tokenizer_path' if model.get('tokenizer_path') else 'path'}"
    _check_local_dir(tokenizer_key, OmegaConf.select(cfg, tokenizer_key), check_tokenizer_dir)
    if OmegaConf.select(cfg, "reward.reward_model.enable"):
        _check_local_dir("reward.reward_model.model_path", cfg.reward.reward_model.model_path, check_model_dir)


def _check_local_dir(key: str, path: str | None, check: Callable[[str], None]) -> None:
    if path and _is_local_dir(str(path)):
        try:
            check(str(path))
        except InputProblem as problem:
            raise ConfigError(f"{key}: {problem}") from None


def _check_reward_function(cfg: DictConfig) -> None:
    path = OmegaConf.select(cfg, "reward.custom_reward_function.path")
    if not path:
        return
    if path.startswith("pkg://"):
        module = path.removeprefix("pkg://").replace("/", ".")
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError(f"reward.custom_reward_function.path: {path}: no module {module} is importable here")
    elif not os.path.isfile(os.path.expanduser(path.removeprefix("file://"))):
        raise ConfigError(f"reward.custom_reward_function.path: {path} does not exist")


def _check_checkpoint_dir_writable(cfg: DictConfig) -> None:
    """trainer.default_local_dir can be created and written here (a probe directory, removed again)."""
    folder = str(cfg.trainer.default_local_dir)
    if not _is_local(folder):
        return
    resolved = os.path.abspath(os.path.expanduser(folder))
    ancestor = resolved
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"trainer.default_local_dir: {folder}: {ancestor} is a file, not a directory; "
                          "choose another checkpoint directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lambda_grpo-probe-", dir=ancestor))
    except OSError as error:
        raise ConfigError(f"trainer.default_local_dir: cannot create {resolved} ({ancestor} is not writable: "
                          f"{error.strerror}); choose a writable checkpoint directory") from None


def _is_local(path: str) -> bool:
    return "://" not in path


def _is_local_dir(path: str) -> bool:
    """A model path meant as a local directory: it looks like one (/, ./, ../, ~), or one exists there, as
    transformers decides; a hub id like Qwen/Qwen2.5-7B is not one."""
    return path.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(path))


def _paths(cfg: DictConfig, key: str) -> list[str]:
    files = OmegaConf.select(cfg, key)
    return [files] if isinstance(files, str) else [str(f) for f in files or []]
