"""lambda_grpo.preflight: requirements from verl's config, the per-node judgement, the report.

The checks against a real Ray cluster (through `launch/submit --preflight`) are in test_launch.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import verl
from omegaconf import OmegaConf

from lambda_grpo import preflight
from lambda_grpo.preflight import Finding, RunRequirements

VERL_CONFIG = Path(verl.__file__).parent / "trainer" / "config" / "_generated_ppo_trainer.yaml"


@pytest.fixture
def verl_cfg():
    """verl's resolved default PPO config: the real key paths preflight reads."""
    return OmegaConf.load(VERL_CONFIG)


def requirements(**changes) -> RunRequirements:
    base = dict(data_files={"data.train_files": ["/d/train.parquet"]}, model_path="/m/qwen", checkpoint_dir="/ckpt",
                nnodes=1, gpus_per_node=8, gpu_memory=preflight.GPU_MEMORY_GB["qwen2_5_7b"],
                loss_names=("vanilla",))
    return RunRequirements(**{**base, **changes})


def local(path: str, exists: bool = True, is_dir: bool = False, config_json: bool = False) -> dict:
    return {"path": path, "resolved": os.path.abspath(path), "kind": "local", "exists": exists, "is_dir": is_dir,
            "has_config_json": config_json}


def facts(**changes) -> dict:
    base = {
        "hostname": "gpu-0", "cwd": "/tmp/ray/working_dir",
        "data_files": {"data.train_files": [local("/d/train.parquet")]},
        "model": local("/m/qwen", is_dir=True, config_json=True),
        "extra_paths": {},
        "checkpoint_dir": {"path": "/ckpt", "resolved": "/ckpt", "ancestor": "/", "writable": True},
        "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85_520_809_984}] * 8,
        "shm_bytes": 64 * 10**9,
        "losses": [{"name": "vanilla", "ok": True, "function": "verl.trainer.ppo.core_algos.f", "file": "/x/core_algos.py"}],
        "plugin": {"loaded": True, "file": "/x/lambda_grpo/plugin.py"},
        "env": {"VERL_USE_EXTERNAL_MODULES": "lambda_grpo.plugin"},
    }
    return {**base, **changes}


def judge(node_facts: dict, req: RunRequirements | None = None, uploaded: bool = True) -> list[Finding]:
    return preflight.check_node("node 10.0.0.1", node_facts, req or requirements(),
                                {"VERL_USE_EXTERNAL_MODULES": "lambda_grpo.plugin"}, uploaded)


def fails(findings: list[Finding]) -> list[str]:
    return [f.message for f in findings if f.level == "FAIL"]


# ----------------------------------------------------------------------------------------------
# Requirements from verl's config.


def test_requirements_read_verls_keys(verl_cfg):
    verl_cfg.data.val_files = ["/d/a.parquet", "/d/b.parquet"]
    verl_cfg.trainer.nnodes = 2
    verl_cfg.actor_rollout_ref.actor.policy_loss.loss_mode = "vanilla"
    req = preflight.requirements_from_config(verl_cfg, "qwen2_5_7b")
    assert req.data_files == {"data.train_files": ["~/data/rlhf/gsm8k/train.parquet"],
                              "data.val_files": ["/d/a.parquet", "/d/b.parquet"]}
    assert req.model_path == "~/models/deepseek-llm-7b-chat"
    assert (req.nnodes, req.gpus_per_node, req.gpu_memory) == (2, 8, preflight.GpuMemory(40.0, 80.0))
    assert req.loss_names == ("vanilla",)
    assert req.checkpoint_dir == "checkpoints/verl_examples/gsm8k"


def test_cpu_device_needs_no_gpu_whatever_the_size(verl_cfg):
    verl_cfg.trainer.device = "cpu"
    req = preflight.requirements_from_config(verl_cfg, None)
    assert (req.gpus_per_node, req.gpu_memory) == (0, None)


def test_gpu_run_of_an_unknown_size_is_refused(verl_cfg):
    with pytest.raises(ValueError, match="model_size='qwen9_9b' has no GPU memory requirement"):
        preflight.requirements_from_config(verl_cfg, "qwen9_9b")


def test_gpu_requirement_is_zero_only_for_the_cpu_size():
    sizes = preflight.GPU_MEMORY_GB
    assert {size for size, need in sizes.items() if need.minimum == 0} == {"tiny_cpu"}
    assert all(need.minimum <= need.tuned_for for need in sizes.values())


def test_every_shipped_model_size_has_a_gpu_requirement():
    from importlib.resources import files

    shipped = {p.name.removesuffix(".yaml") for p in (files("lambda_grpo.configs") / "model_size").iterdir()
               if p.name.endswith(".yaml")}
    assert shipped and shipped <= set(preflight.GPU_MEMORY_GB)


def test_model_size_is_the_choice_hydra_resolved(tmp_path):
    data = [f"data.train_files={tmp_path}/t.parquet", f"data.val_files={tmp_path}/v.parquet"]
    _, choices = preflight.compose_and_validate(["model_size=qwen2_5_3b", "model_size=qwen2_5_7b", *data])
    assert choices["model_size"] == "qwen2_5_7b"
    _, choices = preflight.compose_and_validate(["algo=grpo", *data])
    assert choices["model_size"] in preflight.GPU_MEMORY_GB


# ----------------------------------------------------------------------------------------------
# Judging one node.


def test_healthy_node_has_no_failure():
    findings = judge(facts())
    assert fails(findings) == []
    assert sum(f.message.startswith("GPU ") for f in findings) == 8


def test_missing_data_file_names_key_and_path():
    node = facts(data_files={"data.train_files": [local("/d/train.parquet", exists=False)]})
    assert fails(judge(node)) == ["data.train_files: /d/train.parquet not found"]


def test_relative_data_path_explains_the_working_dir():
    node = facts(data_files={"data.train_files": [local("data/train.parquet", exists=False)]})
    (message,) = fails(judge(node))
    assert "data/train.parquet not found" in message and "use an absolute path" in message


def test_model_directory_without_config_json_fails():
    node = facts(model=local("/m/qwen", is_dir=True, config_json=False))
    assert fails(judge(node)) == ["actor_rollout_ref.model.path: /m/qwen has no config.json"]


@pytest.mark.parametrize(("hub", "level"), [({"cached": True, "offline": True}, "OK"),
                                            ({"cached": False, "offline": False}, "WARN"),
                                            ({"cached": False, "offline": True}, "FAIL")])
def test_hub_model_id_depends_on_cache_and_offline_mode(hub, level):
    node = facts(model={**local("Qwen/Qwen2.5-7B", exists=False), "hub": hub})
    (finding,) = [f for f in judge(node) if f.message.startswith("actor_rollout_ref.model.path")]
    assert finding.level == level


@pytest.mark.parametrize(("name", "memory_bytes", "level"), [("NVIDIA H100 80GB HBM3", 85_520_809_984, "OK"),
                                                             ("NVIDIA A100-SXM4-40GB", 42_505_273_344, "WARN"),
                                                             ("NVIDIA GeForce RTX 4090", 25_757_220_864, "FAIL")])
def test_gpu_memory_against_the_size_requirement(name, memory_bytes, level):
    (finding,) = [f for f in judge(facts(gpus=[{"name": name, "memory_bytes": memory_bytes}])) if f.message.startswith("GPU")]
    assert finding.level == level and name in finding.message


def test_cpu_run_ignores_missing_gpus_and_small_shm():
    assert fails(judge(facts(gpus=None, shm_bytes=0), requirements(gpus_per_node=0, gpu_memory=None))) == []


def test_gpu_run_without_nvidia_smi_fails_and_small_shm_warns():
    findings = judge(facts(gpus=None))
    assert fails(findings) == ["nvidia-smi not found: cannot see this node's GPUs"]
    assert [f.level for f in judge(facts(shm_bytes=64 * 2**20)) if "/dev/shm" in f.message] == ["WARN"]


def test_relative_checkpoint_dir_fails_only_in_an_uploaded_working_dir():
    node = facts(checkpoint_dir={"path": "checkpoints/p/e", "resolved": "/tmp/ray/wd/checkpoints/p/e",
                                 "ancestor": "/tmp/ray/wd", "writable": True})
    (message,) = fails(judge(node, uploaded=True))
    assert "trainer.default_local_dir=checkpoints/p/e is relative" in message
    assert fails(judge(node, uploaded=False)) == []


def test_unwritable_checkpoint_dir_fails():
    node = facts(checkpoint_dir={"path": "/ckpt/run", "resolved": "/ckpt/run", "ancestor": "/", "writable": False})
    assert fails(judge(node)) == ["trainer.default_local_dir: cannot create /ckpt/run (/ is not writable)"]


def test_unregistered_loss_fails_with_verls_error():
    node = facts(losses=[{"name": "my_loss", "ok": False, "error": "ValueError: Unsupported loss mode"}])
    assert fails(judge(node)) == ["loss 'my_loss' not registered in a Ray worker: ValueError: Unsupported loss mode"]


def test_plugin_that_did_not_load_fails():
    (message,) = fails(judge(facts(plugin={"loaded": False, "file": None})))
    assert message.startswith("lambda_grpo's verl.plugins entry point did not load")


def test_runtime_env_that_did_not_arrive_fails():
    (message,) = fails(judge(facts(env={"VERL_USE_EXTERNAL_MODULES": None})))
    assert message.startswith("runtime env did not arrive: {'VERL_USE_EXTERNAL_MODULES': None}")


def test_node_facts_in_this_process(tmp_path):
    """The gathering half for real: files, a model dir, a pkg:// module, verl's registry."""
    (tmp_path / "train.parquet").write_bytes(b"")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    req = requirements(data_files={"data.train_files": [str(tmp_path / "train.parquet"), str(tmp_path / "no.parquet")]},
                       model_path=str(tmp_path / "model"), checkpoint_dir=str(tmp_path / "ckpt" / "run"),
                       gpus_per_node=0, gpu_memory=None,
                       extra_paths={"reward.custom_reward_function.path": "pkg://lambda_grpo.preflight"})
    gathered = preflight.node_facts(req, ["LAMBDA_GRPO_SURELY_UNSET"])
    assert [f["exists"] for f in gathered["data_files"]["data.train_files"]] == [True, False]
    assert gathered["model"]["has_config_json"] and gathered["extra_paths"]["reward.custom_reward_function.path"]["exists"]
    assert gathered["checkpoint_dir"]["ancestor"] == str(tmp_path) and gathered["checkpoint_dir"]["writable"]
    (loss,) = gathered["losses"]
    assert loss["ok"] and loss["function"] == "verl.trainer.ppo.core_algos.compute_policy_loss_vanilla"
    assert gathered["plugin"]["loaded"] and gathered["plugin"]["file"].endswith("lambda_grpo/plugin.py")
    assert gathered["env"] == {"LAMBDA_GRPO_SURELY_UNSET": None}
    assert fails(preflight.check_node("here", gathered, req, {}, uploaded_working_dir=False)) == [
        f"data.train_files: {tmp_path / 'no.parquet'} not found"]


# ----------------------------------------------------------------------------------------------
# The cluster, the report.


def node(address: str, gpus: float, alive: bool = True) -> dict:
    return {"Alive": alive, "NodeManagerAddress": address, "Resources": {"CPU": 64.0, "GPU": gpus}}


def test_cluster_needs_nnodes_nodes_with_enough_gpus():
    req = requirements(nnodes=2)
    ok = preflight.check_cluster([node("10.0.0.1", 8), node("10.0.0.2", 8)], req)
    short = preflight.check_cluster([node("10.0.0.1", 8), node("10.0.0.2", 4), node("10.0.0.3", 8, alive=False)], req)
    assert ok.level == "OK"
    assert short.level == "FAIL"
    assert short.message == ("needs trainer.nnodes=2 nodes with trainer.n_gpus_per_node=8 GPUs each; "
                             "alive: 10.0.0.1 (8 GPUs), 10.0.0.2 (4 GPUs)")


def test_wait_for_nodes_polls_until_workers_join(capsys):
    answers = iter([[node("10.0.0.1", 8)], [node("10.0.0.1", 8), node("10.0.0.2", 8)]])
    finding = preflight.wait_for_nodes(requirements(nnodes=2), wait_s=60, poll_s=0, list_nodes=lambda: next(answers))
    assert finding.level == "OK"
    assert "waiting for nodes" in capsys.readouterr().out


def test_wait_for_nodes_gives_up_after_the_deadline():
    finding = preflight.wait_for_nodes(requirements(nnodes=2), wait_s=0, list_nodes=lambda: [node("10.0.0.1", 8)])
    assert finding.level == "FAIL"


def test_report_shows_overrides_verbatim_and_the_verdict():
    overrides = ["model_size=qwen2_5_7b", "trainer.experiment_name='a b; $HOME'"]
    report = preflight.format_report(overrides, [Finding("OK", "config", "composed"),
                                                 Finding("FAIL", "node x", "data.train_files: /d not found")])
    lines = report.splitlines()
    assert json.loads(lines[1].removeprefix("overrides (as received): ")) == overrides
    assert "  [FAIL] node x: data.train_files: /d not found" in lines
    assert lines[-1] == "PREFLIGHT FAILED: 1 problem(s)"
    assert preflight.format_report([], [Finding("WARN", "c", "m")]).endswith("PREFLIGHT PASSED")


def test_help_documents_every_option():
    help_text = preflight.build_parser().format_help()
    for option in ("--address", "--node-wait-s", "--node-timeout-s", "overrides"):
        assert option in help_text


def test_bad_config_fails_before_touching_ray(capsys, monkeypatch):
    monkeypatch.setattr(preflight.ray, "init", lambda *a, **k: pytest.fail("preflight started Ray for a bad config"))
    status = preflight.main(["actor_rollout_ref.rollout.n=1", "data.train_files=/d/t.parquet",
                             "data.val_files=/d/v.parquet", "actor_rollout_ref.model.path=/m"])
    report = capsys.readouterr().out
    assert status == 1
    assert "[FAIL] config: ConfigError: actor_rollout_ref.rollout.n: group methods need at least 2" in report
    assert report.rstrip().endswith("PREFLIGHT FAILED: 1 problem(s)")


def test_gpu_facts_parse_real_nvidia_smi_output(tmp_path, monkeypatch):
    """The line below is what `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`
    printed on an H200 node (also with CUDA_VISIBLE_DEVICES="", which Ray sets for GPU-less tasks)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf 'NVIDIA H200, 143771\\nNVIDIA H200, 143771\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = preflight._gpu_facts()
    assert gpus == [{"name": "NVIDIA H200", "memory_bytes": 143771 * 2**20}] * 2
    assert fails(judge(facts(gpus=gpus))) == []
