import torch

from tuneforge.data.batching import StepSampler


def test_every_example_once_per_epoch_and_deterministic():
    lengths = [(i * 7) % 23 + 1 for i in range(103)]
    s = StepSampler(lengths, batch_size=4, grad_accum=2, seed=1)
    steps = s.epoch_steps(0)
    flat = [i for st in steps for i in st]
    assert len(flat) == len(set(flat)) and len(flat) >= 96
    assert StepSampler(lengths, 4, 2, seed=1).epoch_steps(0) == steps
    assert s.epoch_steps(1) != steps


def test_processes_split_a_step_like_gradient_accumulation():
    lengths = [(i * 5) % 17 + 1 for i in range(64)]
    one = StepSampler(lengths, batch_size=4, grad_accum=2, world_size=1, rank=0, seed=3)
    ranks = [StepSampler(lengths, batch_size=4, grad_accum=1, world_size=2, rank=r, seed=3) for r in range(2)]
    for step in one.epoch_steps(0):
        mb_one = one.micro_batches(step)
        mb_ddp = [mb for r in ranks for mb in r.micro_batches(step)]
        assert mb_one == mb_ddp


def test_length_grouping_reduces_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(800)]

    def padding(group):
        s = StepSampler(lengths, batch_size=8, seed=0, group_by_length=group)
        waste = total = 0
        for st in s.epoch_steps(0):
            for mb in s.micro_batches(st):
                width = max(lengths[i] for i in mb)
                waste += sum(width - lengths[i] for i in mb)
                total += width * len(mb)
        return waste / total

    assert padding(True) < 0.1 < padding(False)


def test_token_budget_splits_only_what_is_too_large():
    lengths = [500, 480, 40, 30, 20, 10, 10, 10]
    s = StepSampler(lengths, batch_size=8, seed=0, max_batch_tokens=1024)
    (step,) = s.epoch_steps(0)
    mbs = s.micro_batches(step)
    assert sorted(i for mb in mbs for i in mb) == list(range(8))
    assert all(len(mb) * max(lengths[i] for i in mb) <= 1024 for mb in mbs if len(mb) > 1)
    assert len(StepSampler(lengths, batch_size=8, seed=0).micro_batches(step)) == 1


def test_token_budget_split_is_balanced_and_minimal():
    # greedy filling would give 7 + 1; a lone example is slow and, compiled, a graph of its own
    lengths = [81] * 7 + [75]
    s = StepSampler(lengths, batch_size=8, seed=0, max_batch_tokens=615)
    (step,) = s.epoch_steps(0)
    assert sorted(len(mb) for mb in s.micro_batches(step)) == [4, 4]
    # as few pieces as fit: the two long examples together, the six short ones together
    lengths = [500, 480, 40, 30, 20, 10, 10, 10]
    s = StepSampler(lengths, batch_size=8, seed=0, max_batch_tokens=1024)
    (step,) = s.epoch_steps(0)
    assert sorted(len(mb) for mb in s.micro_batches(step)) == [2, 6]


def test_logs_count_the_padding_share():
    from tuneforge.data.chat import EncodedChat
    from tuneforge.data.packing import pad_batch
    from tuneforge.train.loop import _count_padding

    rows = [EncodedChat([1] * n, [1] * n) for n in (6, 2)]
    window = {"real": 0, "padded": 0}
    _count_padding(window, pad_batch(rows, 0))
    assert window == {"real": 8, "padded": 12}
    _count_padding(window, {"input_ids": torch.zeros(2, 3)})  # nothing to tell padding from: not counted
    assert window == {"real": 8, "padded": 12}
