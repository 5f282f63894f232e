"""The fixed-width fast path of the GT-only text reader against its field-by-field parser."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from phenoclip.errors import MalformedInputError
from phenoclip.io.vcf_text import TextBatch, _parse_batch, parse_gt_fields

N = 5
WIDTH = 4 * N - 1


def _row(calls: list[str], pos: int = 100, alt: str = "A", fmt: bytes = b"GT") -> list[bytes]:
    return [b"1", str(pos).encode(), b".", b"C", alt.encode(), b".", b".", b".", fmt, "\t".join(calls).encode()]


def _expand(out) -> list[tuple[int, np.ndarray]]:
    """(pos, gt) per record, whichever path read it."""
    rows = []
    for item in out:
        if isinstance(item, TextBatch):  # planes (allele 1, allele 2, phase) -> (samples, 3) per record
            rows += list(zip(item.pos, item.gt.transpose(1, 2, 0)))
        else:
            rows.append((item[1], item[5]))
    return rows


def test_every_one_digit_call_reads_as_the_field_parser_reads_it():
    """All 242 one-digit calls (alleles 0-9 or '.', '|' or '/'), five samples a record, in one batch."""
    alleles = [str(d) for d in range(10)] + ["."]
    calls = [f"{a}{s}{b}" for a, s, b in itertools.product(alleles, "|/", alleles)]
    calls += calls[:(-len(calls)) % N]
    batch = [_row(calls[i:i + N], pos=i) for i in range(0, len(calls), N)]
    got = _expand(_parse_batch(batch, WIDTH, N, None, "x.vcf"))
    assert all(isinstance(item, TextBatch) for item in _parse_batch(batch, WIDTH, N, None, "x.vcf"))
    assert [p for p, _ in got] == [int(r[1]) for r in batch]
    for (_, gt), r in zip(got, batch):
        expected = parse_gt_fields(r[9].decode().split("\t"), "GT")
        assert gt.dtype == np.int16 and np.array_equal(gt, expected), r[9]


@pytest.mark.parametrize("odd", ["|01", "10|", ":|1"])
def test_a_call_the_tables_cannot_read_goes_to_the_field_parser(odd):
    """A record with one call of the fixed width that is not ``a|b`` leaves the fast path; its
    neighbours stay on it."""
    good = ["0|1", "1|1", "./.", "0/0", "1|0"]
    odd_row = good[:2] + [odd] + good[3:]
    batch = [_row(good, 1), _row(odd_row, 2), _row(good, 3)]
    out = list(_parse_batch(batch, WIDTH, N, None, "x.vcf"))
    assert [type(item).__name__ for item in out] == ["TextBatch", "tuple", "TextBatch"]
    assert np.array_equal(out[1][5], parse_gt_fields(odd_row, "GT"))


@pytest.mark.parametrize("odd", ["0|a", "0-1", "0 1"])
def test_a_call_with_a_non_integer_allele_is_refused_naming_the_record(odd):
    batch = [_row(["0|1", odd, "1|1", "0|0", "0|1"], pos=77)]
    with pytest.raises(MalformedInputError, match="1:77"):
        list(_parse_batch(batch, WIDTH, N, None, "x.vcf"))


def test_kept_columns_and_metadata_columns():
    batch = [_row(["0|1", "1|1", "./.", "0/0", "1|0"], pos=5, alt="A,T"), _row(["1/1"] * N, pos=9, alt=".")]
    batch[0][2] = b"rs1"
    (out,) = _parse_batch(batch, WIDTH, N, np.array([1, 4]), "x.vcf")
    assert out.chrom == ["1", "1"] and out.pos == [5, 9] and out.id == ["rs1", None]
    assert out.ref == ["C", "C"] and out.alts == [["A", "T"], []]
    gt = out.gt.transpose(1, 2, 0)  # (records, kept samples, allele 1 / allele 2 / phase)
    assert gt[0].tolist() == [[1, 1, 1], [1, 0, 1]] and gt[1].tolist() == [[1, 1, 0], [1, 1, 0]]


def test_a_bad_position_in_a_fast_run_is_named():
    batch = [_row(["0|1"] * N, pos=5), _row(["0|1"] * N, pos=6)]
    batch[1][1] = b"6x"
    with pytest.raises(MalformedInputError, match="position '6x'"):
        list(_parse_batch(batch, WIDTH, N, None, "x.vcf"))
