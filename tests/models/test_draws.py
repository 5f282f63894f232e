"""Per-patient random draws (phenoclip.ops.draws): what data-parallel equivalence rests on."""

import torch
from torch import nn

from phenoclip.ops.draws import BatchDraws, RowDraws, drawing, row_dropout


def test_a_patients_draws_follow_the_patient_not_its_batch():
    a = RowDraws.for_batch(7, ["p1", "p2", "p3"])
    b = RowDraws.for_batch(7, ["p3", "p1"])
    x, y = a.rand((3, 5, 4)), b.rand((2, 5, 4))
    assert torch.equal(x[0], y[1]) and torch.equal(x[2], y[0])
    assert not torch.equal(x[0], x[1])
    # a second draw continues each row's stream, the same whatever the batch
    assert torch.equal(a.randn((3, 6))[2], b.randn((2, 6))[0])
    assert torch.equal(a.randint(0, 1000, (3, 9))[0], b.randint(0, 1000, (2, 9))[1])
    # another step key is another stream
    assert not torch.equal(RowDraws.for_batch(8, ["p1"]).rand((1, 5, 4))[0], x[0])


def test_a_subset_of_rows_shares_the_rows_streams():
    a = RowDraws.for_batch(3, ["p1", "p2", "p3"])
    twin = RowDraws.for_batch(3, ["p1", "p2", "p3"])
    sub = a.rows(torch.tensor([False, True, True]))
    assert len(sub) == 2 and sub.randint(0, 10, (2, 4)).dtype == torch.int64
    # p2 and p3 have moved on in `a` too; p1 has not
    after, fresh = a.rand((3, 8)), twin.rand((3, 8))
    assert torch.equal(after[0], fresh[0]) and not torch.equal(after[1], fresh[1])


def test_row_dropout_masks_a_patient_alike_in_any_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Linear(32, 3))
    assert row_dropout(net) == 1
    x = torch.randn(3, 6)
    with drawing(RowDraws.for_batch(11, ["p1", "p2", "p3"])):
        full = net(x)
    with drawing(RowDraws.for_batch(11, ["p3", "p1"])):
        part = net(x[[2, 0]])
    assert torch.allclose(full[[2, 0]], part)
    net.eval()  # no masks at inference
    assert torch.equal(net(x), net(x))


def test_batch_draws_take_one_stream_for_the_batch():
    d = BatchDraws(torch.Generator().manual_seed(0))
    assert torch.equal(d.rand((2, 3)), torch.rand((2, 3), generator=torch.Generator().manual_seed(0)))
    assert d.rows(torch.tensor([True, False])) is d
