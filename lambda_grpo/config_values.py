"""Raw config values before anything uses them: types, shapes, ranges and unknown keys.

Hydra hands every command-line value over as typed as it parses it: `trainer.nnodes=abc` arrives as a
string, `lambda_grpo.lambda_trainable=no` or `='false'` as a (truthy) string, `lambda_bounds=5` as an
int. Nothing downstream checks: Python's `float()` raises a bare traceback, `bool('no')` is True, verl
reads many keys only inside Ray workers. So before the option dataclasses and verl see the config:

- `check_rules`: each key in RULES (the keys lambda_grpo itself reads) holds its kind — a whole number,
  a finite number, true/false, a [low, high] pair — within its bounds;
- `check_against_defaults`: every key whose default (the same config composed without the user's
  value overrides) is true/false or a number still holds one, unless the verl dataclass that types it
  also admits a string; keys added with `+` must exist where the tree is closed — the `lambda_grpo`
  node and every node verl builds into a dataclass (its `_target_`, or a dataclass field of its parent)
  — with a did-you-mean; a `${...}` that does not resolve is reported at the key that holds it.

Every failure is a ConfigError: one line, the key, the value, and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """An invalid training config; the message names the key, the value and the fix."""


CLOSED_NODES = ("lambda_grpo",)
"""Nodes whose keys are all declared in yaml (a `+key` there is a typo); `_target_` nodes are closed too."""

TYPO_SIMILARITY = 0.9
"""difflib ratio above which a key added to an open node is taken for a misspelling of its neighbour
(nnode/nnodes 0.91, lamda_lr/lambda_lr 0.94; num_gpus/num_cpus, both real ray.init arguments, 0.88)."""


@dataclass(frozen=True)
class Rule:
    """What one config key must hold.

    kind: "int" (a whole number), "number" (finite; ints accepted), "bool" (true/false) or "pair"
        (a list of two finite numbers).
    minimum: inclusive lower bound of an "int" or "number", if any.
    meaning: what the value is, for the message.
    example: a valid value, for the fix.
    nullable: null is allowed (the key is optional).
    """

    kind: str
    minimum: float | None = None
    meaning: str = ""
    example: Any = None
    nullable: bool = False


RULES: dict[str, Rule] = {
    "data.train_batch_size": Rule("int", 1, "the prompts per training step", 1024),
    "data.max_prompt_length": Rule("int", 1, "a length in tokens", 1024),
    "data.max_response_length": Rule("int", 1, "a length in tokens", 2048),
    "actor_rollout_ref.actor.ppo_mini_batch_size": Rule("int", 1, "the prompts per optimizer step", 256),
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": Rule("int", 1, "the responses per forward pass", 4,
                                                                 nullable=True),
    "actor_rollout_ref.actor.ppo_epochs": Rule("int", 1, "the passes over each batch", 1),
    "actor_rollout_ref.actor.use_dynamic_bsz": Rule("bool"),
    "actor_rollout_ref.actor.optim.lr": Rule("number", 0.0, "the policy's learning rate", 1e-6),
    "actor_rollout_ref.rollout.n": Rule("int", 1, "the responses per prompt", 8),
    "actor_rollout_ref.rollout.temperature": Rule("number", 0.0, "the sampling temperature", 1.0),
    "trainer.nnodes": Rule("int", 1, "the number of nodes", 1),
    "trainer.n_gpus_per_node": Rule("int", 1, "the GPUs per node, or trainer processes with trainer.device=cpu", 8),
    "trainer.use_v1": Rule("bool"),
    "trainer.v1.separate_async.parameter_sync_step": Rule(
        "int", 1, "the actor updates per weight sync in separate_async", 4),
    "actor_rollout_ref.rollout.nnodes": Rule("int", 0, "the rollout's own nodes (separate_async)", 1),
    "actor_rollout_ref.rollout.n_gpus_per_node": Rule("int", 0, "the rollout's own GPUs per node (separate_async)", 8),
    "actor_rollout_ref.model.lora_rank": Rule("int", 0, "the LoRA rank (0 = full fine-tuning)", 32),
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size": Rule("int", 1, "the Ulysses sequence-parallel size", 2),
    "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size": Rule(
        "int", 1, "the Ulysses sequence-parallel size", 2),
    "lambda_grpo.r": Rule("number", None, "the lift slope", 0.1111111111111111),
    "lambda_grpo.eps": Rule("number", None, "added to the std of the lengths", 1e-6),
    "lambda_grpo.lambda_init": Rule("number", None, "λ's starting value", 0.0),
    "lambda_grpo.lambda_lr": Rule("number", None, "λ's learning rate", 0.01),
    "lambda_grpo.lambda_bounds": Rule("pair", None, "λ's clamp", [-10.0, 10.0]),
    "lambda_grpo.lambda_trainable": Rule("bool"),
    "lambda_grpo.lambda_follow_lr_schedule": Rule("bool"),
    "lambda_grpo.max_consecutive_skipped_steps": Rule(
        "int", 1, "the training steps in a row in which λ may skip an update before the run stops", 3),
}
"""The keys lambda_grpo reads itself (at start-up or in its loss and optimizer), each checked before any use.
Stricter rules of the loss (rollout.n >= 2 for a group, λ's init inside its bounds, h > 0 for the group size)
are checked where those options are built."""

_FALSE_WORDS = ("false", "no", "off", "n", "0")
_TRUE_WORDS = ("true", "yes", "on", "y", "1")
_KINDS = {"int": "a whole number", "number": "a number", "bool": "true or false", "pair": "two numbers [low, high]"}


def read(cfg: DictConfig, key: str) -> Any:
    """The value of a RULES key, checked against its rule (a pair comes back as a tuple of floats)."""
    value = _select(cfg, key)
    check_value(key, value)
    return tuple(float(v) for v in value) if RULES[key].kind == "pair" else value


def check_value(key: str, value: Any) -> None:
    """Raise ConfigError unless `value` (resolved, plain Python) satisfies RULES[key]."""
    _check_kind(key, value, RULES[key])


def check_rules(cfg: DictConfig) -> None:
    """Every RULES key holds its kind within its bounds; raises ConfigError for the first that does not."""
    for key in RULES:
        read(cfg, key)


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{key}: {_one_line(error)}") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_kind(key: str, value: Any, rule: Rule) -> None:
    if value is None and rule.nullable:
        return
    if not _has_kind(value, rule.kind):
        problem = f"must be {_KINDS[rule.kind]}"
    elif not all(math.isfinite(v) for v in (value if rule.kind == "pair" else [value] if rule.kind != "bool" else [])):
        problem = "must be finite"
    elif rule.minimum is not None and value < rule.minimum:
        problem = f"must be >= {rule.minimum:g}"
    else:
        return
    meaning = f"; {rule.meaning}" if rule.meaning else ""
    raise ConfigError(f"{key}: {problem} (got {_shown(value)}{meaning}); {_fix(key, rule, value)}")


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "pair":
        return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
    return _is_number(value) and (kind == "number" or isinstance(value, int))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    return "null" if value is None else repr(value)


def _fix(key: str, rule: Rule, value: Any) -> str:
    if rule.kind == "bool":
        word = str(value).strip().lower()
        choice = "false" if word in _FALSE_WORDS else "true" if word in _TRUE_WORDS else "true or false"
        return f"write {key}={choice}, unquoted"
    example = rule.example if rule.example is not None else rule.minimum if rule.minimum is not None else 1
    if isinstance(example, list):
        example = "[" + ",".join(f"{v:g}" for v in example) + "]"
    decimal = " (a decimal, not a fraction)" if isinstance(value, str) and "/" in value else ""
    return f"write e.g. {key}={example}{decimal}"


# ----------------------------------------------------------------------------------------------
# Against the defaults: the same config composed without the user's value overrides.


@dataclass(frozen=True)
class Defaults:
    """A config composed without value overrides, as plain containers (read-only by convention).

    values: resolved; raw: unresolved, interpolations as `${...}` strings.
    """

    values: dict[str, Any]
    raw: dict[str, Any]

    @classmethod
    def of(cls, reference: DictConfig) -> Defaults:
        return cls(values=_container(reference, resolve=True), raw=_container(reference, resolve=False))


def check_against_defaults(cfg: DictConfig, defaults: Defaults) -> list[str]:
    """Unknown keys in closed nodes, and booleans or numbers replaced by another type; raises ConfigError.

    Interpolated values (`${...}`) are skipped: the key they copy is checked where it is set. One that
    does not resolve is reported at the key the user set, not at the first key that copies it. Returns
    warnings: keys added to open nodes that look like a misspelling of a key beside them.
    """
    raw = _container(cfg, resolve=False)
    try:
        given = _container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        key, cause = _failing_interpolation(cfg, raw, defaults.raw) or (error.full_key, error)
        raise ConfigError(f"{key or 'config'}: {_one_line(cause)}") from None
    return check_tree(given, defaults.values, raw)


def check_tree(given: Mapping[str, Any], default: Mapping[str, Any], raw: Mapping[str, Any]) -> list[str]:
    """`check_against_defaults` on plain containers: resolved values, resolved defaults, unresolved values."""
    warnings: list[str] = []
    _compare(given, raw, default, "", None, warnings)
    return warnings


def _container(cfg: DictConfig, resolve: bool) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False)


def _failing_interpolation(cfg: DictConfig, raw: Mapping[str, Any], default: Mapping[str, Any],
                           prefix: str = "") -> tuple[str, Exception] | None:
    """The first interpolation that differs from the defaults' and does not resolve, with its error."""
    for name, value in raw.items():
        key = f"{prefix}{name}"
        theirs = default.get(name) if isinstance(default, Mapping) else None
        if isinstance(value, Mapping):
            found = _failing_interpolation(cfg, value, theirs if isinstance(theirs, Mapping) else {}, f"{key}.")
            if found:
                return found
        elif isinstance(value, str) and "${" in value and value != theirs:
            try:
                OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            except OmegaConfBaseException as error:
                return key, error
    return None


def _compare(given: Mapping[str, Any], raw: Mapping[str, Any], default: Mapping[str, Any], prefix: str,
             cls: type | None, warnings: list[str]) -> None:
    """Walk `given` beside `default`; `cls` is the verl dataclass that types `given` (None: untyped)."""
    for name, value in given.items():
        key, expected = f"{prefix}{name}", default.get(name, _ABSENT)
        if isinstance(raw.get(name), str) and "${" in raw[name]:
            continue
        if expected is _ABSENT:
            _check_known(key, list(default), cls, warnings)
        elif isinstance(value, Mapping) and isinstance(expected, Mapping):
            _compare(value, raw[name], expected, f"{key}.", _child_class(cls, name, value), warnings)
        elif _changed_type(expected, value) and not _admits(cls, name, value):
            kind = "bool" if isinstance(expected, bool) else "number"
            _check_kind(key, value, Rule(kind, example=expected, nullable=True))


_ABSENT = object()


def _changed_type(expected: Any, value: Any) -> bool:
    """A true/false default now holding a non-boolean, or a numeric default a non-number (null is left alone)."""
    if value is None:
        return False
    if isinstance(expected, bool):
        return not isinstance(value, bool)
    return _is_number(expected) and not _is_number(value)


def _check_known(key: str, known: list[str], cls: type | None, warnings: list[str]) -> None:
    """A key the defaults lack: an error in closed nodes; in open ones (override_config, ray_init, ...) a
    warning when it is one typo away from a key beside it."""
    parent_key, _, name = key.rpartition(".")
    if parent_key in CLOSED_NODES:
        owner = f"the {parent_key} node"
    elif cls is not None and name not in (fields := [f.name for f in dataclasses.fields(cls)]):
        known, owner = fields, f"verl's {cls.__name__} ({parent_key})"
    else:
        close = difflib.get_close_matches(name, known, n=1, cutoff=TYPO_SIMILARITY)
        if close:
            warnings.append(f"{key}: not a key of the defaults (added with +); did you mean {parent_key}.{close[0]}?")
        return
    raise ConfigError(f"{key}: unknown key, {owner} has no {name!r}; {_suggestion(parent_key, name, known)}")


def _suggestion(parent_key: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"did you mean {parent_key}.{close[0]}?"
    return f"its keys include {', '.join(sorted(k for k in known if not k.startswith('_'))[:12])}"


def _child_class(parent: type | None, name: str, child: Mapping[str, Any]) -> type | None:
    """The dataclass verl builds `child` into: its own `_target_`, else the parent dataclass's field type."""
    target = child.get("_target_")
    if isinstance(target, str):
        from hydra.utils import get_class

        try:
            cls = get_class(target)
        except Exception:  # noqa: BLE001 — an unimportable target is verl's error to report, not a type question
            return None
        return cls if dataclasses.is_dataclass(cls) else None
    hint = _hints(parent).get(name) if parent is not None else None
    return next((t for t in _flatten(hint) if dataclasses.is_dataclass(t)), None) if hint is not None else None


def _admits(cls: type | None, name: str, value: Any) -> bool:
    """Whether verl's dataclass declares field `name` with a type that accepts `value`'s type."""
    hint = _hints(cls).get(name) if cls is not None else None
    types = _flatten(hint) if hint is not None else set()
    return Any in types or type(value) in types


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 — unresolvable annotations: no evidence about the field types
        return {}


def _flatten(hint: Any) -> set[Any]:
    args = typing.get_args(hint)
    return set().union(*(_flatten(a) for a in args)) if args else {hint}


# ----------------------------------------------------------------------------------------------
# Hydra's composition errors, as one line.

_NO_SUCH_KEY = re.compile(r"Could not override '([^']+)'")
_NO_SUCH_OPTION = re.compile(r"Could not find '([^'/]+)/([^']+)'")
_ALREADY_THERE = re.compile(r"An item is already at '([^']+)'")
_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic"


def explain_compose_error(message: str, overrides: Sequence[str], defaults: Defaults | None) -> str:
    """Hydra's (multi-line) composition error as one line that starts with the key or group it is about.

    defaults: the default config, for a did-you-mean on a key that does not exist (None: no suggestion).
    """
    if match := _NO_SUCH_KEY.search(message):
        key = match.group(1)
        hint = _corrected_key(key, defaults.values) if defaults else None
        return f"{key}: no such key; {hint or 'check the spelling'} (a new key needs a leading +, e.g. +{key}=...)"
    if match := _NO_SUCH_OPTION.search(message):
        group, option = match.groups()
        listing = message.split("Available options", 1)[-1].split("Config search path")[0]
        options = [line.strip() for line in listing.splitlines()[1:] if line.strip()]
        return f"{group}: no option {option!r} (no {group}/{option}.yaml); choose one of {', '.join(options)}"
    if match := _ALREADY_THERE.search(message):
        key = match.group(1)
        return f"{key}: exists already, so set it without the leading + ({key}=...)"
    unparsable = _unparsable(overrides)
    if unparsable is not None:
        key = unparsable.split("=", 1)[0].lstrip("+~")
        detail = "; ".join(line.strip() for line in message.splitlines() if line.strip() and "hydra.cc" not in line)
        return (f"{key}: cannot parse {unparsable!r} ({detail}); write key=value, quoting a value with spaces or "
                f"brackets in single quotes (see {_GRAMMAR})")
    return "; ".join(line.strip() for line in message.split("Config search path:")[0].splitlines() if line.strip())


def _corrected_key(key: str, tree: Mapping[str, Any]) -> str | None:
    """'did you mean <key with its first unknown part replaced by the closest existing one>?', or None."""
    parts, node = key.split("."), tree
    for index, part in enumerate(parts):
        if not isinstance(node, Mapping):
            return None
        if part not in node:
            close = difflib.get_close_matches(part, list(node), n=1)
            return f"did you mean {'.'.join([*parts[:index], close[0], *parts[index + 1:]])}?" if close else None
        node = node[part]
    return None


def _unparsable(overrides: Sequence[str]) -> str | None:
    """The first override Hydra's grammar cannot parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception:  # noqa: BLE001 — any parse failure marks the culprit
            return override
    return None


def _one_line(error: BaseException) -> str:
    """An OmegaConf/Hydra message without its trailing `full_key:`/`object_type=` lines."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(("full_key:", "reference_type=", "object_type="))]
    return "; ".join(kept) or type(error).__name__
