"""``--suite pretrain``'s data-parallel throughput table, on a small cohort."""

from __future__ import annotations

import pytest

from phenoclip_bench import BenchContext
from phenoclip_bench.pretrain_speed import data_parallel_table


@pytest.mark.slow
def test_data_parallel_throughput_is_measured_for_each_process_count(small_cohort, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    ctx = BenchContext(out=tmp_path, cohort=None, patients=None, variants=None, quick=True, seed=0, work=work)
    data = [str(small_cohort["gene"]), str(small_cohort["expr"])]
    table, metrics, commands = data_parallel_table(ctx, data, ["gene", "expr"], batch=16, processes=(1, 2))
    assert [row[0] for row in table.rows] == [1, 2]
    assert [row[2] for row in table.rows] == [16, 8]  # the global batch is shared out
    for n in (1, 2):
        assert metrics[f"ddp{n}_samples_per_s"] > 0 and 0 <= metrics[f"ddp{n}_data_wait_share"] < 1
    # the speed-up column is the ratio of the two rates measured in this run
    assert table.rows[1][5] == round(metrics["ddp2_samples_per_s"] / metrics["ddp1_samples_per_s"], 2)
    assert len(commands) == 2 and commands[1].startswith("torchrun --standalone --nproc-per-node 2")
