"""The workload benchmark's arithmetic: medians, throughput, overhead, verdicts."""

import pytest

from avocado_bgsnap import bench


def test_median_odd_even_and_empty():
    assert bench.median([3, 1, 2]) == 2.0
    assert bench.median([4, 1, 3, 2]) == 2.5  # mean of the two middle values
    assert bench.median([1.0, 100.0]) == 50.5
    assert bench.median([7]) == 7.0
    assert bench.median(iter([5, 9])) == 7.0  # any iterable, consumed once
    with pytest.raises(ValueError):
        bench.median([])
    assert bench.median_or_none([]) is None


def status(steps, elapsed):
    return {"steps_total": steps, "elapsed_s": elapsed}


def test_write_mib_s_from_two_status_reads():
    # 256 pages of 4 KiB = 1 MiB; 2560 pages in 2 s = 5 MiB/s
    assert bench.write_mib_s(status(1000, 10.0), status(3560, 12.0)) == pytest.approx(5.0)
    # the reply's fields may arrive as text
    assert bench.write_mib_s(status("0", "1.5"), status("256", "2.5")) == pytest.approx(1.0)
    assert bench.write_mib_s(status(10, 1.0), status(10, 2.0)) == 0.0  # stalled writers


@pytest.mark.parametrize("before, after", [
    (status(0, 5.0), status(100, 5.0)),      # no running time (frozen all along)
    (status(0, 5.0), status(100, 4.0)),      # time backwards: another run
    (status(500, 1.0), status(100, 2.0)),    # steps backwards: another run
])
def test_write_mib_s_rejects_reads_from_different_runs(before, after):
    with pytest.raises(ValueError):
        bench.write_mib_s(before, after)


def test_overhead_pct_sign_and_size():
    assert bench.overhead_pct(on_mib_s=95.0, off_mib_s=100.0) == pytest.approx(5.0)
    assert bench.overhead_pct(100.0, 100.0) == 0.0
    # swapped inputs (ON faster than OFF) must come out negative, not |x|
    assert bench.overhead_pct(on_mib_s=100.0, off_mib_s=95.0) == pytest.approx(-100 * 5 / 95)
    assert bench.overhead_pct(0.0, 50.0) == 100.0
    for off in (0.0, -1.0):
        with pytest.raises(ValueError):
            bench.overhead_pct(10.0, off)


def test_round_overheads_pair_each_round():
    on, off = [90.0, 100.0, 99.0], [100.0, 95.0, 99.0]
    got = bench.round_overheads_pct(on, off)
    assert got == pytest.approx([10.0, -100 * 5 / 95, 0.0])
    # swapped: every round flips sign
    assert bench.round_overheads_pct(off, on)[0] == pytest.approx(-100 * 10 / 90)
    # an unfinished last round (ON measured, OFF not) is left out
    assert bench.round_overheads_pct([90.0, 80.0], [100.0]) == pytest.approx([10.0])
    assert bench.round_overheads_pct([], []) == []
    assert bench.round_overheads_pct([90.0, 5.0], [100.0, 0.0]) == [10.0, None]  # stalled OFF


def test_summarize_survives_stalled_writers():
    out = bench.summarize(1024, [800], [1.0], [1024], on_mib_s=[90.0], off_mib_s=[0.0])
    assert out["latency_overhead_pct"] is None
    assert out["summary"][3] == "latency overhead per ON/OFF round: n/a %"


def test_on_off_order_is_abba():
    assert bench.on_off_order(1) == [True, False]
    assert bench.on_off_order(3) == [True, False, False, True, True, False]
    order = bench.on_off_order(4)
    assert order.count(True) == order.count(False) == 4
    # balanced positions: for an even number of rounds each side's mean index is equal
    on = [i for i, x in enumerate(order) if x]
    off = [i for i, x in enumerate(order) if not x]
    assert sum(on) == sum(off)
    for bad in (0, -1):
        with pytest.raises(ValueError):
            bench.on_off_order(bad)


def test_target_edges():
    assert bench.below(9.99, 10.0) is True
    assert bench.below(10.0, 10.0) is False  # "under 10 s": exactly 10 is not met
    assert bench.below(10.01, 10.0) is False
    assert bench.below(None, 10.0) is None
    assert bench.below(-0.5, 5.0) is True  # a negative overhead meets the target
    assert [bench.verdict(x) for x in (True, False, None)] == ["met", "not met", "not measured"]


def test_summary_lines():
    assert bench.verify_line(1024, 3.456) == "verify 1024 MiB: median 3.46 s (target < 10 s: met)"
    assert bench.verify_line(1024, 10.0).endswith("(target < 10 s: not met)")
    assert "stated for 1024 MiB" in bench.verify_line(256, 1.0)
    assert bench.verify_line(1024, None) == ("verify 1024 MiB: median n/a s "
                                             "(target < 10 s: not measured)")
    assert bench.overhead_line(4.99) == "latency overhead: 5.0 % (target < 5 %: met)"
    assert bench.overhead_line(5.0) == "latency overhead: 5.0 % (target < 5 %: not met)"
    assert bench.overhead_line(-1.24) == "latency overhead: -1.2 % (target < 5 %: met)"


def test_summarize_full_and_partial():
    out = bench.summarize(1024, [800, 900, 1000], [2.0, 1.0, 3.0], [512, 1024, 341],
                          on_mib_s=[90.0, 96.0, 93.0], off_mib_s=[100.0, 99.0, 101.0])
    assert out["verify_s_median"] == 2.0 and out["verify_mib_s_median"] == 512
    assert out["fill_mib_s_median"] == 900 and out["fill_mib_s_first"] == 800
    assert out["summary"][2] == ("fill 800 MiB/s (first; median of 3 fills 900), verify 512 MiB/s, "
                                 "writers 93 MiB/s with latency timing / 100 without (medians)")
    assert out["latency_on_mib_s_median"] == 93.0 and out["latency_off_mib_s_median"] == 100.0
    assert out["latency_overhead_pct"] == pytest.approx(7.0)
    assert out["targets"]["verify_s"]["met"] is True
    assert out["targets"]["latency_overhead_pct"]["met"] is False
    assert out["summary"][0] == "verify 1024 MiB: median 2.00 s (target < 10 s: met)"
    assert out["summary"][1] == "latency overhead: 7.0 % (target < 5 %: not met)"
    assert out["latency_overhead_pct_rounds"] == pytest.approx([10.0, 100 * 3 / 99, 100 * 8 / 101])
    assert out["summary"][3] == "latency overhead per ON/OFF round: 10.0, 3.0, 7.9 %"
    # an interrupted run: nothing measured after the fill
    partial = bench.summarize(1024, [800], [], [], [], [])
    assert partial["fill_mib_s_first"] == partial["fill_mib_s_median"] == 800
    assert bench.summarize(1024, [], [], [], [], [])["fill_mib_s_first"] is None
    assert partial["latency_overhead_pct"] is None and partial["verify_s_median"] is None
    assert partial["targets"]["verify_s"]["met"] is None
    assert "not measured" in partial["summary"][0] and "not measured" in partial["summary"][1]
    assert partial["summary"][3].endswith("round: n/a")
    # only one side measured: no overhead
    assert bench.summarize(1024, [], [], [], [90.0], [])["latency_overhead_pct"] is None
