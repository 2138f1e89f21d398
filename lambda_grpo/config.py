"""Compose and validate the training config (verl's `ppo_trainer` tree + `configs/`).

`compose(overrides)` builds exactly what `python -m lambda_grpo.main <overrides>` trains with;
`validate(cfg, choices=...)` runs every start-up check, ours and then verl 0.9.1's own `validate_config`,
in seconds and before Ray starts: raw values (`config_values`), the options of the loss and of λ, their
wiring into verl, batch sizes, and (with `check_paths`) the data files, model directories, reward function
and checkpoint directory the run will read and write (`config_inputs`). Each failure is a one-line
`ConfigError` that starts with the offending key and gives the value and the fix; legal but pointless
settings come back as warnings.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from lambda_grpo import VERL_VERSION
from lambda_grpo import tiny_assets  # noqa: F401  (registers the ${lambda_grpo.tiny:...} resolver of tiny_cpu)
from lambda_grpo.config_inputs import check_inputs
from lambda_grpo.config_values import (
    ConfigError,
    Defaults,
    check_against_defaults,
    check_rules,
    explain_compose_error,
    read,
)
from lambda_grpo.learnable_lambda import LambdaOptions
from lambda_grpo.surrogates import Surrogate, UnsupportedSurrogate, surrogate_for
from lambda_grpo.weights import OptionError, WeightOptions, check_lambda_range

CONFIG_MODULE = "lambda_grpo.configs"
CONFIG_NAME = "lambda_grpo"
LAMBDA_OPTIMIZER = ("lambda_grpo.learnable_lambda", "LambdaAdamW")
REQUIRED_KEYS = ("data.train_files", "data.val_files", "actor_rollout_ref.model.path")
TRAINER_MODES = ("sync", "colocate_async", "separate_async")
LAMBDA_ONLY_OPTIONS = ("r", "normalization", "eps", "lambda_init", "lambda_lr", "lambda_bounds", "lambda_trainable",
                       "lambda_follow_lr_schedule", "max_consecutive_skipped_steps")
"""`lambda_grpo` options that only the lambda scheme reads (z, h and λ); the other schemes ignore them."""


def config_dir() -> Path | None:
    """The `configs/` folder beside the imported `lambda_grpo` package, if there is one; else None.

    In a source checkout, and in a Ray job's uploaded working dir, the configs next to the code are the
    ones to use; an installed wheel has only the packaged copy (`lambda_grpo.configs`). Without this, a
    job running uploaded code would read the configs of whatever checkout is installed.
    """
    folder = Path(__file__).resolve().parent.parent / "configs"
    return folder if (folder / f"{CONFIG_NAME}.yaml").is_file() else None


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The training config for these command-line overrides, with the Hydra choices applied."""
    return compose_with_choices(overrides)[0]


def compose_with_choices(overrides: Sequence[str] = ()) -> tuple[DictConfig, dict[str, str | None]]:
    """`compose`, plus the option Hydra chose for every config group (e.g. {"model_size": "qwen2_5_7b"})."""
    folder = config_dir()
    if GlobalHydra.instance().is_initialized():  # inside `python -m lambda_grpo.main`: its Hydra, same configs
        context = contextlib.nullcontext()
    elif folder:
        context = initialize_config_dir(config_dir=str(folder), version_base=None)
    else:
        context = initialize_config_module(config_module=CONFIG_MODULE, version_base=None)
    try:
        with context:
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides), return_hydra_config=True)
    except HydraException as error:
        default = defaults() if overrides else None  # the default groups always compose: no recursion
        raise ConfigError(explain_compose_error(str(error), overrides, default)) from error
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    apply_choices(cfg, choices)
    return cfg, choices


def apply_choices(cfg: DictConfig, choices: Mapping[str, str | None]) -> None:
    """Fill what depends on the chosen config groups: a null experiment name becomes <algo>-<model_size>."""
    if cfg.trainer.experiment_name is None:
        cfg.trainer.experiment_name = f"{choices['algo']}-{choices['model_size']}"


def weight_options(cfg: DictConfig) -> WeightOptions:
    """The response-weight options of this config (validated)."""
    node = cfg.lambda_grpo
    return _checked(
        WeightOptions,
        {"max_response_length": "data.max_response_length"},
        scheme=node.scheme,
        r=float(node.r),
        normalization=node.normalization,
        eps=float(node.eps),
        max_response_length=int(cfg.data.max_response_length),
        max_group_size=int(cfg.actor_rollout_ref.rollout.n),
    )


def lambda_options(cfg: DictConfig) -> LambdaOptions:
    """λ's options of this config (validated), as the λ optimizer will receive them."""
    node = cfg.lambda_grpo
    return _checked(
        LambdaOptions,
        {name: f"lambda_grpo.lambda_{name}" for name in ("init", "lr", "bounds")},
        init=float(node.lambda_init),
        lr=float(node.lambda_lr),
        bounds=tuple(float(b) for b in node.lambda_bounds),
        trainable=bool(node.lambda_trainable),
        follow_lr_schedule=bool(node.lambda_follow_lr_schedule),
    )


def policy_surrogate(cfg: DictConfig) -> Surrogate:
    """How the configured policy loss carries the weights (lambda_grpo.surrogates); ConfigError if it cannot."""
    loss_mode = cfg.actor_rollout_ref.actor.policy_loss.loss_mode
    custom = cfg.lambda_grpo.custom_surrogates
    if not (OmegaConf.is_list(custom) or isinstance(custom, list)) or not all(isinstance(name, str) for name in custom):
        raise ConfigError(f"lambda_grpo.custom_surrogates: must be a list of loss names, got {custom!r}")
    try:
        return surrogate_for(loss_mode, custom)
    except UnsupportedSurrogate as error:
        raise ConfigError(f"actor_rollout_ref.actor.policy_loss.loss_mode: {error}") from error


def defaults(choices: Mapping[str, str | None] | None = None) -> Defaults:
    """What each key defaults to under these Hydra group choices: their config without value overrides.

    `choices` as `compose_with_choices` returns them (or Hydra's runtime choices); None = the default groups.
    Cached per choices: the result is shared, read it only.
    """
    groups = sorted(f"{group}={choice}" for group, choice in (choices or {}).items()
                    if choice is not None and not group.startswith("hydra/") and ".." not in group)
    return _defaults(tuple(groups))


@functools.lru_cache(maxsize=16)
def _defaults(groups: tuple[str, ...]) -> Defaults:
    return Defaults.of(compose_with_choices(groups)[0])


def validate(cfg: DictConfig, check_paths: bool = True, choices: Mapping[str, str | None] | None = None) -> list[str]:
    """Every start-up check; raises ConfigError naming the key. Returns warnings (legal but pointless settings).

    choices: the Hydra group choices `cfg` was composed with (None = the defaults), so that each value is
    compared with its own default. check_paths=False skips the checks of files on this machine.
    """
    _check_verl_version()
    _check_required(cfg)
    check_rules(cfg)
    default = defaults(choices)
    warnings = check_against_defaults(cfg, default)
    _check_lift(cfg)
    options = weight_options(cfg)
    lambda_options(cfg)
    _check_loss_wiring(cfg, options)
    _check_trainer(cfg)
    _check_batch_sizes(cfg)
    _check_checkpoint_dir(cfg)
    if check_paths:
        check_inputs(cfg)
    _check_with_verl(cfg)
    return warnings + _pointless_settings(cfg, default)


def _checked(cls: type, config_keys: Mapping[str, str], **values: Any) -> Any:
    """cls(**values); an OptionError becomes a ConfigError naming the config key of its field."""
    try:
        return cls(**values)
    except OptionError as error:
        key = config_keys.get(error.field, f"lambda_grpo.{error.field}")
        raise ConfigError(f"{key}: {error}") from error


def _check_verl_version() -> None:
    installed = importlib.metadata.version("verl")
    if installed != VERL_VERSION:
        raise ConfigError(
            f"verl=={installed} is installed, lambda_grpo is built and tested against verl=={VERL_VERSION} "
            f"(its loss and trainer wiring is private API that changes between releases); "
            f"pip install verl=={VERL_VERSION}"
        )


def _check_required(cfg: DictConfig) -> None:
    missing = [key for key in REQUIRED_KEYS if _is_unset(cfg, key) or OmegaConf.select(cfg, key) == []]
    if missing:
        raise ConfigError(f"{missing[0]}: required but not set (missing: {', '.join(missing)}); pass {missing[0]}=...")


def _check_loss_wiring(cfg: DictConfig, options: WeightOptions) -> None:
    actor = cfg.actor_rollout_ref.actor
    policy_surrogate(cfg)
    if actor.loss_agg_mode != "token-mean":
        raise ConfigError(
            f"actor_rollout_ref.actor.loss_agg_mode: must be token-mean (got {actor.loss_agg_mode!r}); "
            "choose the aggregation with algo=grpo|dapo|dr_grpo|lambda_grpo instead (grpo is seq-mean-token-mean, "
            "dr_grpo seq-mean-token-sum-norm; entropy and KL terms stay token-mean)"
        )
    n = int(cfg.actor_rollout_ref.rollout.n)
    if n < 2:
        raise ConfigError(
            f"actor_rollout_ref.rollout.n: group methods need at least 2 responses per prompt (got {n})"
        )
    if options.scheme == "lambda":
        _check_lambda(cfg, options, n)


def _check_lambda(cfg: DictConfig, options: WeightOptions, n: int) -> None:
    """What the learnable λ needs: its optimizer, checkpointed state and a safe range."""
    actor = cfg.actor_rollout_ref.actor
    optimizer = (actor.optim.optimizer_impl, actor.optim.optimizer)
    if optimizer != LAMBDA_OPTIMIZER:
        raise ConfigError(
            f"actor_rollout_ref.actor.optim.optimizer: scheme lambda keeps λ in {'.'.join(LAMBDA_OPTIMIZER)} "
            f"(got {'.'.join(optimizer)}); use algo=lambda_grpo, which sets optimizer_impl and optimizer"
        )
    try:
        check_lambda_range(lambda_options(cfg).bounds, options.r, n)
    except ValueError as error:
        raise ConfigError(f"lambda_grpo.lambda_bounds: {error}") from error
    if bool(cfg.lambda_grpo.lambda_trainable):
        for direction in ("save_contents", "load_contents"):
            contents = list(actor.checkpoint.get(direction) or [])
            if "optimizer" not in contents:
                raise ConfigError(
                    f"actor_rollout_ref.actor.checkpoint.{direction}: must include 'optimizer' (got {contents}); "
                    "λ is saved and restored with the actor's optimizer state"
                )


def _check_lift(cfg: DictConfig) -> None:
    r = read(cfg, "lambda_grpo.r")
    if cfg.lambda_grpo.scheme == "lambda" and r == 0:
        raise ConfigError(
            "lambda_grpo.r: 0 makes h_i = 1 + r·z_i = 1 for every response, so every weight is 1 whatever λ is "
            "(DAPO, with a λ that never gets a gradient); use r > 0 (the paper's 1/9 is the default), or algo=dapo"
        )


def _pointless_settings(cfg: DictConfig, default: Defaults) -> list[str]:
    """Legal values that do nothing or undo the method: one warning each."""
    warnings = []
    scheme = cfg.lambda_grpo.scheme
    if scheme != "lambda":
        given = OmegaConf.to_container(cfg.lambda_grpo, resolve=True)
        for name in LAMBDA_ONLY_OPTIONS:
            if given[name] != default.values["lambda_grpo"][name]:
                warnings.append(f"lambda_grpo.{name}={given[name]} has no effect with lambda_grpo.scheme={scheme} "
                                "(only the lambda scheme has z, h and λ); drop it, or use algo=lambda_grpo")
    if read(cfg, "actor_rollout_ref.actor.optim.lr") == 0:
        warnings.append("actor_rollout_ref.actor.optim.lr=0: the policy never changes; set a positive learning rate")
    if scheme == "lambda" and read(cfg, "lambda_grpo.lambda_trainable") and read(cfg, "lambda_grpo.lambda_lr") == 0:
        warnings.append("lambda_grpo.lambda_lr=0: λ never moves although lambda_trainable=true; for a fixed λ "
                        "set lambda_grpo.lambda_trainable=false")
    if read(cfg, "actor_rollout_ref.rollout.temperature") == 0:
        warnings.append("actor_rollout_ref.rollout.temperature=0: greedy sampling gives every response of a group "
                        "the same text, so every advantage is 0 and nothing is learned; use a temperature > 0 (1.0)")
    return warnings


def _check_trainer(cfg: DictConfig) -> None:
    """verl's V1 trainer in any of its modes, an FSDP actor (with or without Ulysses SP), no distillation."""
    if not read(cfg, "trainer.use_v1"):
        raise ConfigError(
            "trainer.use_v1: must be true (got false): lambda_grpo attaches to verl's V1 trainer, and the legacy "
            "trainer (main_ppo_v0) is deprecated in verl 0.9.1; drop the override"
        )
    mode = cfg.trainer.v1.trainer_mode
    if mode not in TRAINER_MODES:
        raise ConfigError(
            f"trainer.v1.trainer_mode: not a verl 0.9.1 V1 trainer mode (got {mode!r}); use one of "
            f"{', '.join(TRAINER_MODES)}"
        )
    if mode == "separate_async":
        _check_separate_async(cfg)
    if cfg.get("distillation") is not None and cfg.distillation.get("enabled", False):
        raise ConfigError("distillation.enabled: distillation replaces the policy loss, so it cannot run with "
                          "lambda_grpo (got true); set distillation.enabled=false")
    strategy = cfg.actor_rollout_ref.actor.strategy
    if strategy not in ("fsdp", "fsdp2"):
        raise ConfigError(
            f"actor_rollout_ref.actor.strategy: must be fsdp or fsdp2 (got {strategy!r}): λ's gradient is averaged "
            "over every actor rank, which is the global-batch gradient when every rank computes its micro-batches' "
            "whole loss (FSDP, Ulysses SP), while megatron's pipeline and tensor parallelism compute it on some "
            "ranks only; use actor_rollout_ref.actor.strategy=fsdp2"
        )
    _check_sequence_parallel(cfg)
    _check_lora(cfg)


def _check_lora(cfg: DictConfig) -> None:
    """LoRA (λ is one more parameter group beside the adapters; README): what the CPU platform cannot do."""
    if read(cfg, "actor_rollout_ref.model.lora_rank") > 0 and cfg.trainer.device == "cpu" and not (
            cfg.actor_rollout_ref.model.lora.merge):
        raise ConfigError(
            "actor_rollout_ref.model.lora.merge: must be true with LoRA on the CPU platform (got false): verl 0.9.1 "
            "otherwise loads the adapters into vLLM through vLLM 0.24 internals that the CPU build (vLLM 0.32) no "
            "longer has; drop the override (platform=cpu sets true)"
        )


def _check_separate_async(cfg: DictConfig) -> None:
    """Where separate_async can run (not on CPU), then what verl's separate_async trainer asserts in its
    constructor, checked before Ray starts."""
    if cfg.trainer.device == "cpu":
        raise ConfigError(
            "trainer.v1.trainer_mode: separate_async cannot run on the CPU platform (got separate_async with "
            "trainer.device=cpu): it sends the weights to the rollout's own devices through a checkpoint engine, "
            "and every verl 0.9.1 engine but the colocated 'naive' one (nccl, hccl, nixl, mooncake, "
            "kimi_ckpt_engine, delta_sharded) moves them over CUDA or RDMA; use sync or colocate_async on CPU"
        )
    train, mini = read(cfg, "data.train_batch_size"), read(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size")
    sync = read(cfg, "trainer.v1.separate_async.parameter_sync_step")
    if train != sync * mini:
        raise ConfigError(
            f"trainer.v1.separate_async.parameter_sync_step: it × actor_rollout_ref.actor.ppo_mini_batch_size ({mini}) "
            f"must equal data.train_batch_size ({train}), since a training step makes parameter_sync_step updates "
            f"of one mini-batch each, then syncs the rollout's weights (got {sync}); set it to {train // mini}"
            if train % mini == 0 else
            f"trainer.v1.separate_async.parameter_sync_step: it × actor_rollout_ref.actor.ppo_mini_batch_size ({mini}) "
            f"must equal data.train_batch_size ({train}) (got {sync}); make the mini-batch divide the batch"
        )
    for key in ("actor_rollout_ref.rollout.nnodes", "actor_rollout_ref.rollout.n_gpus_per_node"):
        if read(cfg, key) == 0:
            raise ConfigError(
                f"{key}: must be > 0 in separate_async, where the rollout runs on its own GPUs "
                "(actor_rollout_ref.rollout.nnodes × n_gpus_per_node) (got 0); set both"
            )
    if cfg.actor_rollout_ref.rollout.checkpoint_engine.backend == "naive":
        raise ConfigError(
            "actor_rollout_ref.rollout.checkpoint_engine.backend: separate_async sends the weights to the rollout's "
            "own GPUs, which the in-process 'naive' engine cannot (got naive); use nccl"
        )


SEQUENCE_PARALLEL_KEYS = ("actor_rollout_ref.actor.ulysses_sequence_parallel_size",
                          "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size")
"""Where verl 0.9.1 reads the actor's Ulysses size: the engine's own key, and the deprecated actor key that
verl copies into it when > 1."""


def sequence_parallel_size(cfg: DictConfig) -> int:
    """The actor's Ulysses size (the larger of SEQUENCE_PARALLEL_KEYS, as verl's copy makes it)."""
    return max(read(cfg, key) for key in SEQUENCE_PARALLEL_KEYS)


def _check_sequence_parallel(cfg: DictConfig) -> None:
    """Ulysses SP: verl's requirements, named before Ray starts (λ itself needs nothing more; README)."""
    sp = sequence_parallel_size(cfg)
    if sp == 1:
        return
    gpus = read(cfg, "trainer.n_gpus_per_node") * read(cfg, "trainer.nnodes")
    if gpus % sp:
        raise ConfigError(
            f"actor_rollout_ref.actor.ulysses_sequence_parallel_size: must divide the actor's {gpus} GPUs "
            f"(trainer.n_gpus_per_node × trainer.nnodes), which form sequence-parallel groups of that size "
            f"(got {sp}); use a divisor of {gpus}"
        )
    if not cfg.actor_rollout_ref.model.use_remove_padding:
        raise ConfigError(
            f"actor_rollout_ref.model.use_remove_padding: must be true with ulysses_sequence_parallel_size={sp}, "
            "since verl's Ulysses splits the packed sequences of remove-padding, which needs flash-attn's varlen "
            "kernels, hence a GPU: sequence parallelism cannot run on the CPU platform (got false); set it to true "
            "on GPUs, or ulysses_sequence_parallel_size=1"
        )


def _check_batch_sizes(cfg: DictConfig) -> None:
    actor = cfg.actor_rollout_ref.actor
    n = int(cfg.actor_rollout_ref.rollout.n)
    gpus = int(cfg.trainer.n_gpus_per_node) * int(cfg.trainer.nnodes)
    sp = sequence_parallel_size(cfg)
    dp = gpus // sp  # the ranks of one Ulysses group share their micro-batches
    groups = f"{dp} data-parallel groups ({gpus} GPUs / ulysses_sequence_parallel_size {sp})" if sp > 1 else (
        f"{gpus} GPUs (trainer.n_gpus_per_node × trainer.nnodes)")
    train, mini = int(cfg.data.train_batch_size), int(actor.ppo_mini_batch_size)
    if train % mini:
        raise ConfigError(
            f"actor_rollout_ref.actor.ppo_mini_batch_size: {mini} must divide data.train_batch_size ({train})"
        )
    if (mini * n) % dp:
        raise ConfigError(
            f"actor_rollout_ref.actor.ppo_mini_batch_size: {mini} prompts × rollout.n {n} = {mini * n} responses "
            f"must divide over {groups}"
        )
    micro = actor.get("ppo_micro_batch_size_per_gpu")
    if not actor.use_dynamic_bsz and micro and (mini * n // dp) % int(micro):
        raise ConfigError(
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu: {micro} must divide the per-GPU mini-batch "
            f"({mini * n // dp} responses)"
        )


def ray_job_runtime_env() -> dict[str, Any]:
    """The runtime env of the Ray job this process runs in ({} outside `ray job submit`), as verl reads it."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    return json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}")).get("runtime_env", {})


def _check_checkpoint_dir(cfg: DictConfig) -> None:
    folder = str(cfg.trainer.default_local_dir)
    if ray_job_runtime_env().get("working_dir") and not os.path.isabs(os.path.expanduser(folder)):
        raise ConfigError(
            f"trainer.default_local_dir: {folder} is relative, and this Ray job runs in a temporary copy of its "
            "uploaded working dir: checkpoints would vanish with the job and resume would find nothing. "
            "Use an absolute path on shared storage"
        )


def _check_with_verl(cfg: DictConfig) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except (AssertionError, ValueError, TypeError, HydraException) as error:
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise ConfigError(f"verl's validate_config rejected the config: {message}") from error


def _is_unset(cfg: DictConfig, key: str) -> bool:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key)
    return parent is None or leaf not in parent or OmegaConf.is_missing(parent, leaf) or parent[leaf] in (None, "")
