"""Driver-side group fields survive verl's padding and balance_batch reordering."""

import uuid

import pytest
import torch
from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions

from lambda_grpo.group_fields import GROUP_LENGTHS_KEY, POSITION_KEY, GroupTooWideError, group_fields
from lambda_grpo.weights import WeightOptions, lambda_weights, response_weights

N, MAX_LEN, PROMPT_LEN = 4, 16, 8


def rollout_batch(seed=0):
    """5 prompts × n=4 responses, one prompt lost a response (incomplete group), in generation order."""
    generator = torch.Generator().manual_seed(seed)
    uids = [f"{p}-{uuid.UUID(int=p)}" for p in range(5) for _ in range(N)][:-1]
    lengths = torch.randint(1, MAX_LEN + 1, (len(uids),), generator=generator)
    return uids, lengths


def balance_like_verl(uids, lengths, dp_size=2, batch_multiple=8):
    """verl's V1 `_balance_batch`: append zero-mask `pad<hex>` rows, then reorder by sequence workload."""
    pad_uid = f"pad{uuid.uuid4().hex}"
    pad = (-len(uids)) % batch_multiple
    uids = uids + [pad_uid] * pad
    lengths = torch.cat([lengths, torch.zeros(pad, dtype=lengths.dtype)])
    seq_lens = (lengths + PROMPT_LEN).tolist()
    partitions = get_seqlen_balanced_partitions(calculate_workload(torch.tensor(seq_lens)), k_partitions=dp_size,
                                                equal_size=True)
    order = [i for partition in partitions for i in partition]
    return [uids[i] for i in order], lengths[order], order


def mask_of(lengths):
    return (torch.arange(MAX_LEN).unsqueeze(0) < lengths.unsqueeze(1)).long()


@pytest.mark.parametrize("normalization", ["softmax", "power"])
def test_shuffled_padded_batch_gets_true_groups_and_the_same_weights(normalization):
    uids, lengths = rollout_batch()
    shuffled_uids, shuffled_lengths, order = balance_like_verl(uids, lengths)
    assert order != sorted(order)  # the balancing really reordered the rows

    fields = group_fields(shuffled_uids, mask_of(shuffled_lengths), group_size=N)
    table, position = fields[GROUP_LENGTHS_KEY], fields[POSITION_KEY]
    assert table.shape == (len(shuffled_uids), N) and table.dtype == torch.float32
    for row, uid in enumerate(shuffled_uids):
        true_group = sorted(float(l) for u, l in zip(uids, lengths) if u == uid) if not uid.startswith("pad") else []
        assert sorted(v for v in table[row].tolist() if v > 0) == true_group
        assert table[row, position[row]] == shuffled_lengths[row]

    options = WeightOptions("lambda", normalization=normalization)
    from_fields = lambda_weights(table, position, options, lam=1.8)
    reference = response_weights(lengths.float(), uids, "lambda", lam=1.8, normalization=normalization)
    real = [i < len(uids) for i in order]
    torch.testing.assert_close(from_fields[real], reference[[i for i in order if i < len(uids)]])
    assert bool((from_fields[[not r for r in real]] == 0).all())  # padding rows weigh nothing


def test_table_width_is_fixed_by_rollout_n_whatever_the_padding():
    uids, lengths = rollout_batch()
    assert group_fields(uids[:3], mask_of(lengths[:3]), group_size=N)[GROUP_LENGTHS_KEY].shape == (3, N)
    padded_uids, padded_lengths, _ = balance_like_verl(uids, lengths, batch_multiple=32)  # 13 padding rows
    assert group_fields(padded_uids, mask_of(padded_lengths), group_size=N)[GROUP_LENGTHS_KEY].shape == (32, N)


def test_mask_and_uids_must_agree():
    with pytest.raises(ValueError, match="B = 3 uids"):
        group_fields(["a", "b", "c"], torch.ones(2, 5), group_size=2)


def test_a_group_wider_than_rollout_n_is_refused_on_the_driver():
    uids, lengths = rollout_batch()
    with pytest.raises(GroupTooWideError, match="group '0-.*' has 4 non-empty responses, more than .* 3"):
        group_fields(uids, mask_of(lengths), group_size=3)
    lengths[: N - 3] = 0  # an empty response does not count: group "0" now has 3
    group_fields(uids[:N], mask_of(lengths[:N]), group_size=3)
