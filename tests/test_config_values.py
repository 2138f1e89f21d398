"""lambda_grpo.config_values: every key we read, and every boolean or number of verl's tree, refuses bad values
with one line naming the key, the value and the fix; unknown keys in closed nodes are refused."""

from __future__ import annotations

import copy
import math

import pytest
from omegaconf import OmegaConf

from lambda_grpo.config import compose, defaults
from lambda_grpo.config_values import (
    RULES,
    ConfigError,
    _container,
    check_against_defaults,
    check_rules,
    check_tree,
    check_value,
    read,
)

STRING_ADMITTED = {"algorithm.rollout_correction.rollout_is_threshold"}
"""Numeric defaults whose verl dataclass field also takes a string (`str | float`, e.g. "0.5_2.0")."""


@pytest.fixture(scope="module")
def default_cfg():
    return compose([])


@pytest.fixture(scope="module")
def default_values():
    return defaults()


def bad_values(key: str) -> list:
    """Values that break RULES[key]: wrong types, non-finite numbers, below the minimum, null."""
    rule = RULES[key]
    values = {
        "int": ["abc", "1/2", 1.5, True, math.inf],
        "number": ["abc", "1/9", True, math.nan, math.inf, -math.inf, [1.0]],
        "bool": ["no", "false", "yes", 1, 0, "off"],
        "pair": [5, "[-1,1]", [1, 2, 3], ["a", "b"], [-math.inf, 1], [1], {"low": -1, "high": 1}],
    }[rule.kind]
    if rule.minimum is not None:
        values.append(rule.minimum - 1)
    if not rule.nullable:
        values.append(None)
    return values


def with_value(cfg, key: str, value):
    changed = copy.deepcopy(cfg)
    OmegaConf.update(changed, key, value, merge=False)
    return changed


@pytest.mark.parametrize("key", sorted(RULES))
def test_every_rule_refuses_every_bad_value_with_key_value_and_fix(key):
    for value in bad_values(key):
        with pytest.raises(ConfigError) as error:
            check_value(key, value)
        message = str(error.value)
        assert message.startswith(f"{key}: must be "), (value, message)
        assert "\n" not in message
        shown = "null" if value is None else repr(value)
        assert f"(got {shown}" in message or f"(got the string {value!r}" in message, (value, message)
        assert f"; write {key}=" in message or f"; write e.g. {key}=" in message, (value, message)


def test_every_rule_accepts_the_default_and_its_own_example(default_cfg):
    check_rules(default_cfg)
    for key, rule in RULES.items():
        if rule.example is not None:
            check_value(key, rule.example)


def test_check_rules_reads_the_composed_config(default_cfg):
    with pytest.raises(ConfigError, match="^trainer.nnodes: must be >= 1 "):
        check_rules(with_value(default_cfg, "trainer.nnodes", 0))
    assert read(default_cfg, "lambda_grpo.lambda_bounds") == (-10.0, 10.0)


@pytest.mark.parametrize(("value", "fix"), [("no", "=false, unquoted"), ("'false'", "=false, unquoted"),
                                            ("yes", "=true, unquoted"), ("maybe", "=true or false, unquoted")])
def test_a_boolean_given_a_word_is_refused_with_the_value_it_meant(value, fix):
    with pytest.raises(ConfigError, match=f"^lambda_grpo.lambda_trainable: must be true or false .*{fix}$"):
        check_value("lambda_grpo.lambda_trainable", value.strip("'"))


def test_a_fraction_is_answered_with_its_decimal():
    with pytest.raises(ConfigError, match=r"write e.g. lambda_grpo.r=0.1111111111111111 \(a decimal, not a fraction\)"):
        check_value("lambda_grpo.r", "1/9")


def test_optional_keys_accept_null():
    check_value("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", None)


# ----------------------------------------------------------------------------------------------
# Against the defaults: every boolean and number of the composed tree.


def leaves(resolved, raw, prefix=""):
    for name, value in resolved.items():
        if isinstance(raw.get(name), str) and "${" in raw[name]:
            continue
        if isinstance(value, dict):
            yield from leaves(value, raw[name], f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def replaced(tree: dict, key: str, value) -> dict:
    changed = copy.deepcopy(tree)
    *parents, leaf = key.split(".")
    node = changed
    for part in parents:
        node = node[part]
    node[leaf] = value
    return changed


def test_every_boolean_and_number_of_the_tree_refuses_a_string(default_cfg, default_values):
    given, raw = _container(default_cfg, resolve=True), _container(default_cfg, resolve=False)
    default = default_values.values
    typed = [(key, value) for key, value in leaves(given, raw) if isinstance(value, (bool, int, float))]
    assert len(typed) > 300  # verl's whole tree, not a sample
    admitted = set()
    for key, value in typed:
        bad = "abc" if not isinstance(value, bool) else "no"
        try:
            check_tree(replaced(given, key, bad), default, raw)
        except ConfigError as error:
            kind = "true or false" if isinstance(value, bool) else "a number"
            assert str(error).startswith(f"{key}: must be {kind} (got the string {bad!r}"), str(error)
        else:
            admitted.add(key)
    assert admitted == STRING_ADMITTED


def test_numbers_stay_numbers_of_either_kind(default_cfg, default_values):
    """An int default takes a float (entropy_coeff: 0 → 0.001) and null is left to the key's owner."""
    for key, value in [("actor_rollout_ref.actor.entropy_coeff", 0.001), ("trainer.total_training_steps", None),
                       ("algorithm.rollout_correction.rollout_is_threshold", "0.5_2.0")]:
        check_against_defaults(with_value(default_cfg, key, value), default_values)


def test_the_key_of_an_interpolated_copy_is_the_one_named(default_cfg, default_values):
    """rollout.n is copied into actor.rollout_n by interpolation: the error names where it was set."""
    with pytest.raises(ConfigError, match="^actor_rollout_ref.rollout.n: must be a number"):
        check_against_defaults(with_value(default_cfg, "actor_rollout_ref.rollout.n", "abc"), default_values)


def test_an_unresolvable_interpolation_names_its_key(default_cfg, default_values):
    with pytest.raises(ConfigError, match="^data.max_prompt_length: Interpolation key 'nowhere' not found"):
        check_against_defaults(with_value(default_cfg, "data.max_prompt_length", "${nowhere}"), default_values)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("lambda_grpo.lamda_lr", "lambda_grpo.lamda_lr: unknown key, the lambda_grpo node has no 'lamda_lr'; "
                                 "did you mean lambda_grpo.lambda_lr?"),
        ("actor_rollout_ref.actor.clip_ratio_hgh", "actor_rollout_ref.actor.clip_ratio_hgh: unknown key, verl's "
                                                   "FSDPActorConfig (actor_rollout_ref.actor) has no 'clip_ratio_hgh'; "
                                                   "did you mean actor_rollout_ref.actor.clip_ratio_high?"),
        ("actor_rollout_ref.actor.zzz.yyy", "actor_rollout_ref.actor.zzz: unknown key, verl's FSDPActorConfig"),
        ("algorithm.rollout_correction.rollout_is_treshold", "algorithm.rollout_correction.rollout_is_treshold: "
                                                             "unknown key, verl's RolloutCorrectionConfig"),
    ],
)
def test_unknown_keys_in_closed_nodes_are_refused_with_a_suggestion(default_cfg, default_values, key, message):
    cfg = copy.deepcopy(default_cfg)
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, key, 1, merge=True, force_add=True)
    with pytest.raises(ConfigError) as error:
        check_against_defaults(cfg, default_values)
    assert str(error.value).startswith(message), str(error.value)


@pytest.mark.parametrize("key", ["actor_rollout_ref.model.override_config.rope_theta", "ray_kwargs.ray_init._temp_dir",
                                 "ray_kwargs.ray_init.num_gpus", "trainer.my_note",
                                 "reward.custom_reward_function.reward_kwargs.preference"])
def test_open_nodes_take_new_keys(default_cfg, default_values, key):
    cfg = copy.deepcopy(default_cfg)
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, key, "x", merge=True, force_add=True)
    assert check_against_defaults(cfg, default_values) == []


@pytest.mark.parametrize(("key", "meant"), [("trainer.nnode", "trainer.nnodes"),
                                            ("trainer.experiment_nam", "trainer.experiment_name")])
def test_a_new_key_one_typo_from_its_neighbour_warns(default_cfg, default_values, key, meant):
    cfg = copy.deepcopy(default_cfg)
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, key, 1, merge=True, force_add=True)
    assert check_against_defaults(cfg, default_values) == [
        f"{key}: not a key of the defaults (added with +); did you mean {meant}?"]
