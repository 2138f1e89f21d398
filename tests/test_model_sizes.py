"""The model sizes: the one-GPU smoke size is the tiny CPU run on the GPU platform, and every size stops rollouts
at the end of the chat turn, keeps a bounded number of checkpoints and sizes its log-prob pass as verl tests it."""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lambda_grpo.config import compose, validate
from lambda_grpo.preflight import requirements_from_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
QWEN_SIZES = ["qwen2_5_1_5b", "qwen2_5_3b", "qwen2_5_7b"]

TINY_GPU_OWN_KEYS = {
    # Token-budget (dynamic) micro-batches, as the Qwen sizes use them on GPUs.
    "actor_rollout_ref.actor.use_dynamic_bsz",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz",
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",
    # vLLM's share of the GPU (the CPU platform has no such budget).
    "actor_rollout_ref.rollout.gpu_memory_utilization",
    # <algo>-<model_size>.
    "trainer.experiment_name",
}
"""What tiny_gpu may change besides the platform's keys: how it batches on a GPU, nothing of the model, data,
reward, algorithm, lengths, group size, learning rate or step count."""


def flat(node, prefix=""):
    """{"a.b.c": leaf} of a nested dict."""
    leaves = {}
    for key, value in (node or {}).items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            leaves.update(flat(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def platform_keys():
    files = [CONFIG_DIR / "platform" / f"{name}.yaml" for name in ("cpu", "gpu")]
    return {key for path in files for key in flat(yaml.safe_load(path.read_text()))}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """Composing a tiny size resolves its asset paths, which builds the assets: into a scratch cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAMBDA_GRPO_CACHE", str(tmp_path_factory.mktemp("tiny_cache")))
        yield


def composed(size):
    return flat(OmegaConf.to_container(compose([f"model_size={size}"]), resolve=False))


def test_tiny_gpu_is_tiny_cpu_on_the_gpu_platform(tiny_cache):
    cpu, gpu = composed("tiny_cpu"), composed("tiny_gpu")
    changed = {key for key in cpu.keys() | gpu.keys() if cpu.get(key, "<absent>") != gpu.get(key, "<absent>")}
    assert changed - platform_keys() - TINY_GPU_OWN_KEYS == set()
    # The GPU stack is what changed: CUDA, FSDP, FlashAttention 2 with remove-padding, vLLM as verl runs it.
    assert (gpu["trainer.device"], gpu["actor_rollout_ref.actor.strategy"]) == ("cuda", "fsdp")
    assert gpu["actor_rollout_ref.model.use_remove_padding"] is True
    assert "actor_rollout_ref.model.override_config.attn_implementation" not in gpu  # verl's flash_attention_2
    assert gpu["actor_rollout_ref.rollout.enforce_eager"] is False and gpu["actor_rollout_ref.actor.use_dynamic_bsz"]
    # One GPU, one vLLM engine; the same tiny model, data, reward, agent loop and run length.
    assert gpu["trainer.n_gpus_per_node"] == gpu["trainer.nnodes"] == 1
    assert gpu["actor_rollout_ref.rollout.tensor_model_parallel_size"] == 1
    for key in ("actor_rollout_ref.model.path", "data.train_files", "reward.custom_reward_function.path",
                "actor_rollout_ref.rollout.agent.default_agent_loop", "trainer.total_training_steps"):
        assert gpu[key] == cpu[key], key


def test_tiny_gpu_composes_and_validates_on_cpu(tiny_cache):
    cfg = compose(["model_size=tiny_gpu"])
    validate(cfg)  # ours, then verl 0.9.1's validate_config; the model and data paths exist
    assert cfg.trainer.experiment_name == "lambda_grpo-tiny_gpu"
    # The preflight knows what it asks of the one GPU.
    requirements = requirements_from_config(cfg, "tiny_gpu")
    assert (requirements.nnodes, requirements.gpus_per_node, requirements.gpu_memory.minimum) == (1, 1, 16.0)


@pytest.mark.parametrize("size", [*QWEN_SIZES, "tiny_cpu"])
def test_every_size_stops_rollouts_at_the_end_of_the_turn(size, tiny_cache):
    cfg = compose([f"model_size={size}"])
    loop = cfg.actor_rollout_ref.rollout.agent.default_agent_loop
    assert loop == ("seeded_chat_turn_agent" if size.startswith("tiny") else "chat_turn_agent")
    assert cfg.actor_rollout_ref.model.external_lib == "lambda_grpo.agent_loop"  # registers both in the workers


@pytest.mark.parametrize("size", QWEN_SIZES)
def test_log_prob_pass_is_within_verls_tested_budgets_with_chunked_entropy(size):
    cfg = compose([f"model_size={size}"])
    for role in ("rollout", "ref"):
        assert 24_576 <= cfg.actor_rollout_ref[role].log_prob_max_token_len_per_gpu <= 30_720, role
    assert cfg.actor_rollout_ref.actor.entropy_from_logits_with_chunking is True
    assert cfg.actor_rollout_ref.actor.use_dynamic_bsz and cfg.actor_rollout_ref.rollout.log_prob_use_dynamic_bsz


@pytest.mark.parametrize("size", [*QWEN_SIZES, "tiny_cpu", "tiny_gpu"])
def test_checkpoint_retention_keeps_what_evaluation_and_resume_read(size, tiny_cache):
    """The evaluation reads the latest checkpoint, a resume falls back to the one before: 2 are kept."""
    assert compose([f"model_size={size}"]).trainer.max_actor_ckpt_to_keep == 2
