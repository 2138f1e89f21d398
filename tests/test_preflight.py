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
        "checkpoint_dir": {"path": "/ckpt", "resolved": "/ckpt", "ancestor": "/", "writable": True,
                           "free_bytes": 2 * 10**12},
        "model_size": {"parameters": 7_615_616_512, "extra_bytes": 11_000_000},
        "train_rows": 7500,
        "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85_520_809_984, "driver_version": "580.105.06"}] * 8,
        "torch": {"version": "2.11.0+cu130", "cuda": "13.0"},
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


def test_cpu_device_needs_logical_gpus_but_no_gpu_memory_whatever_the_size(verl_cfg):
    """verl's worker groups ask Ray for "GPU" on the CPU platform too: each node must declare them."""
    verl_cfg.trainer.device = "cpu"
    req = preflight.requirements_from_config(verl_cfg, None)
    assert (req.gpus_per_node, req.gpu_memory) == (8, None)
    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 16.0}}]
    assert preflight.check_cluster(nodes, req).level == "FAIL"


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
    gpus = [{"name": name, "memory_bytes": memory_bytes, "driver_version": "580.105.06"}]
    (finding,) = [f for f in judge(facts(gpus=gpus)) if f.message.startswith("GPU")]
    assert finding.level == level and name in finding.message


def test_cpu_run_ignores_missing_gpus_and_small_shm():
    assert fails(judge(facts(gpus=None, shm_bytes=0), requirements(gpus_per_node=0, gpu_memory=None))) == []


def test_gpu_run_without_nvidia_smi_fails_and_small_shm_warns():
    findings = judge(facts(gpus=None))
    assert fails(findings) == ["nvidia-smi not found: cannot see this node's GPUs"]
    assert [f.level for f in judge(facts(shm_bytes=64 * 2**20)) if "/dev/shm" in f.message] == ["WARN"]


def test_relative_checkpoint_dir_fails_only_in_an_uploaded_working_dir():
    node = facts(checkpoint_dir={"path": "checkpoints/p/e", "resolved": "/tmp/ray/wd/checkpoints/p/e",
                                 "ancestor": "/tmp/ray/wd", "writable": True, "free_bytes": 10**12})
    (message,) = fails(judge(node, uploaded=True))
    assert "trainer.default_local_dir=checkpoints/p/e is relative" in message
    assert fails(judge(node, uploaded=False)) == []


def test_unwritable_checkpoint_dir_fails():
    node = facts(checkpoint_dir={"path": "/ckpt/run", "resolved": "/ckpt/run", "ancestor": "/", "writable": False,
                                 "free_bytes": 10**12})
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


def test_node_facts_read_model_size_rows_free_space_and_torch(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import save_file

    pq.write_table(pa.table({"prompt": ["a", "b", "c"]}), tmp_path / "train.parquet")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    save_file({"w": torch.zeros(4, 8)}, str(tmp_path / "model" / "model.safetensors"))
    req = requirements(data_files={"data.train_files": [str(tmp_path / "train.parquet")]},
                       model_path=str(tmp_path / "model"), checkpoint_dir=str(tmp_path / "ckpt"))
    gathered = preflight.node_facts(req, [])
    assert gathered["model_size"] == {"parameters": 32, "extra_bytes": 2}
    assert gathered["train_rows"] == 3
    assert gathered["checkpoint_dir"]["free_bytes"] > 0
    assert gathered["torch"] == {"version": torch.__version__, "cuda": torch.version.cuda}


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


def test_gpu_facts_come_from_nvidia_smi(tmp_path, monkeypatch):
    """`_gpu_facts` runs nvidia-smi with the query parse_nvidia_smi reads (a stand-in prints the H200 line)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --query-gpu=name,memory.total,driver_version ] || exit 3\n"
                    "printf 'NVIDIA H200, 143771, 580.105.06\\nNVIDIA H200, 143771, 580.105.06\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = preflight._gpu_facts()
    assert gpus == [{"name": "NVIDIA H200", "memory_bytes": 143771 * 2**20, "driver_version": "580.105.06"}] * 2
    assert fails(judge(facts(gpus=gpus))) == []


# ----------------------------------------------------------------------------------------------
# The NVIDIA driver against the CUDA of the node's torch.

# Lines in the format `nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits`
# prints. Name and memory of the H200 were captured on an H200 node; the H100's memory is the 81559 MiB
# nvidia-smi reports (modal-labs/modal-client#2797); the driver versions are ones nvidia-smi printed in
# public logs: 580.105.06 (bigstack-oss/cubecos#312), 570.86.15 (fastfetch-cli/fastfetch#1658). No GPU
# was available to capture all three fields at once on the same machine.
NVIDIA_SMI_R580 = "NVIDIA H200, 143771, 580.105.06\nNVIDIA H200, 143771, 580.105.06\n"
NVIDIA_SMI_R570 = "NVIDIA H100 80GB HBM3, 81559, 570.86.15\n"


def driver_findings(smi_output: str, torch_fact: dict) -> list[Finding]:
    gpus = preflight.parse_nvidia_smi(smi_output)
    return [f for f in judge(facts(gpus=gpus, torch=torch_fact)) if "driver" in f.message or "CPU build" in f.message]


def test_nvidia_smi_lines_parse():
    assert preflight.parse_nvidia_smi(NVIDIA_SMI_R570) == [
        {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 81559 * 2**20, "driver_version": "570.86.15"}]


def test_driver_580_runs_torch_built_for_cuda_13():
    (finding,) = driver_findings(NVIDIA_SMI_R580, {"version": "2.11.0+cu130", "cuda": "13.0"})
    assert finding.level == "OK" and "NVIDIA driver 580.105.06" in finding.message


def test_driver_570_cannot_run_torch_built_for_cuda_13():
    (finding,) = driver_findings(NVIDIA_SMI_R570, {"version": "2.11.0+cu130", "cuda": "13.0"})
    assert finding.level == "FAIL"
    assert finding.message == ("NVIDIA driver 570.86.15, torch 2.11.0+cu130 (CUDA 13.0): CUDA 13.x needs driver >= 580; "
                               "upgrade this node's NVIDIA driver to 580 or newer")
    # The same driver runs a CUDA 12 build.
    assert [f.level for f in driver_findings(NVIDIA_SMI_R570, {"version": "2.9.1+cu128", "cuda": "12.8"})] == ["OK"]


def test_cpu_torch_on_a_gpu_node_fails():
    (finding,) = driver_findings(NVIDIA_SMI_R580, {"version": "2.13.0+cpu", "cuda": None})
    assert finding.level == "FAIL" and "torch 2.13.0+cpu is a CPU build" in finding.message


def test_cpu_run_has_no_driver_check():
    node = facts(gpus=None, torch={"version": "2.13.0+cpu", "cuda": None})
    assert fails(judge(node, requirements(gpus_per_node=0, gpu_memory=None))) == []


# ----------------------------------------------------------------------------------------------
# Free space at the checkpoint directory.

# `df -P -k` at /work and /dev/shm, captured on the CI machine (Linux 6.18): on /dev/vda, Used + Available
# is less than the size (blocks reserved for root), so Available is the number that counts.
DF_ROOT = """\
Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/vda         264212084 49920612  56470300      47% /
"""
DF_SHM = """\
Filesystem     1024-blocks     Used Available Capacity Mounted on
tmpfs             24684084     1408  24682676       1% /dev/shm
"""


@pytest.mark.parametrize(("output", "available"), [(DF_ROOT, 56470300 * 1024), (DF_SHM, 24682676 * 1024),
                                                   ("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                                                    "map auto_home 0 0 0 100% /System/Volumes/Data/home\n", 0)])
def test_df_available_is_read_from_captured_output(output, available):
    assert preflight.parse_df_available(output) == available


def test_free_bytes_runs_df_here(tmp_path):
    import shutil

    assert preflight._free_bytes(str(tmp_path)) == pytest.approx(shutil.disk_usage(tmp_path).free, rel=0.01)


def space(free_bytes: int, **node) -> list[Finding]:
    plan = preflight.CheckpointPlan(save_freq=20, total_training_steps=None, total_epochs=2, train_batch_size=128,
                                    max_to_keep=node.pop("keep", None), model_dtype="fp32",
                                    save_contents=("model", "optimizer", "extra"))
    checkpoint_dir = {"path": "/ckpt", "resolved": "/ckpt", "ancestor": "/shared", "writable": True,
                      "free_bytes": free_bytes}
    found = judge(facts(checkpoint_dir=checkpoint_dir, **node), requirements(checkpoints=plan))
    return [f for f in found if f.message.startswith("trainer.default_local_dir:") and "free" in f.message]


def test_disk_for_every_checkpoint_of_a_7b_run_fails_on_a_small_volume():
    """df's 56 GB at / against 6 checkpoints of 91 GB (116 steps, save_freq 20, every one kept)."""
    (finding,) = space(preflight.parse_df_available(DF_ROOT))
    assert finding.level == "FAIL"
    assert "57.8 GB free at /shared; the run keeps up to 6 checkpoint(s) of 91.4 GB" in finding.message
    assert "= 548 GB: free space there, lower trainer.max_actor_ckpt_to_keep" in finding.message


def test_retention_makes_the_same_run_fit():
    (finding,) = space(200 * 10**9, keep=2)
    assert finding.level == "OK" and "keeps up to 2 checkpoint(s)" in finding.message and "= 183 GB" in finding.message


@pytest.mark.parametrize(("node", "why"), [({"model_size": None}, "no *.safetensors files"),
                                           ({"train_rows": None}, "set trainer.max_actor_ckpt_to_keep")])
def test_unknown_size_or_length_warns(node, why):
    (finding,) = space(10**12, **node)
    assert finding.level == "WARN" and why in finding.message


def test_unreadable_free_space_warns():
    (finding,) = [f for f in judge(facts(checkpoint_dir={"path": "/ckpt", "resolved": "/ckpt", "ancestor": "/",
                                                         "writable": True, "free_bytes": None}),
                                   requirements(checkpoints=preflight.checkpoint_plan_from_config(
                                       OmegaConf.load(VERL_CONFIG)))) if "df failed" in f.message]
    assert finding.level == "WARN"


def test_checkpoint_plan_reads_verls_keys(verl_cfg):
    verl_cfg.trainer.max_actor_ckpt_to_keep = 3
    verl_cfg.trainer.save_freq = 25
    plan = preflight.checkpoint_plan_from_config(verl_cfg)
    assert plan == preflight.CheckpointPlan(save_freq=25, total_training_steps=None, total_epochs=30,
                                            train_batch_size=1024, max_to_keep=3, model_dtype="fp32",
                                            save_contents=("model", "optimizer", "extra"))
