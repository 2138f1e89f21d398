"""λ under Ulysses sequence parallelism: verl's engine step simulated on a dp = 2 × sp = 2 gloo mesh
(tests/sequence_parallel_worker.py) against the single-rank run on the whole mini-batch.

Why λ needs nothing SP-specific (README "Trainer modes, parallelism, LoRA"): verl gathers the log-probs over
the SP group before the loss, so every rank of an SP group computes its micro-batch's whole loss, Σℓ/T·dp with T counted over
the data-parallel group and dp = world/sp, and gets the same ∂L/∂λ; averaging λ's gradient over all world
ranks is then the average over the data-parallel groups, the gradient of the global loss. The model's
gradient reaches each rank only through its slice, scaled by sp in the gather's backward, and FSDP's average
over the world brings it to the same global gradient. Ulysses needs flash-attn's varlen kernels, so it has
no end-to-end run on CPU; this is the test that covers it.
"""

from pathlib import Path

import pytest
from gloo_ranks import run_ranks

WORKER = Path(__file__).with_name("sequence_parallel_worker.py")


@pytest.mark.distributed
def test_lambda_under_dp2_sp2_is_equal_on_all_ranks_and_to_the_single_rank_value(tmp_path):
    reference = run_ranks(WORKER, 1, ["--sp", "1"], tmp_path / "single")[0]
    ranks = run_ranks(WORKER, 4, ["--sp", "2"], tmp_path / "dp2sp2")
    for loss_mode in ("vanilla", "cispo"):
        expected = reference[loss_mode]
        assert len(set(expected["lambda"])) == len(expected["lambda"])  # λ moved at every step: not vacuous
        for rank in ranks:
            assert rank[loss_mode]["lambda"] == ranks[0][loss_mode]["lambda"]  # bit-identical on every rank
            assert rank[loss_mode]["lambda"] == pytest.approx(expected["lambda"], rel=1e-12, abs=1e-14)
            for weight, expected_weight in zip(rank[loss_mode]["weight"], expected["weight"], strict=True):
                assert weight == pytest.approx(expected_weight, rel=1e-10), loss_mode
        # Before the all-reduce: the two ranks of an SP group hold the same λ gradient (the whole micro-batch
        # loss), the two data-parallel groups different ones (their own rows).
        local = [rank[loss_mode]["local_lambda_grad"] for rank in ranks]  # rank = dp_rank · 2 + sp_rank
        assert local[0] == local[1] and local[2] == local[3] and local[0] != local[2], local
