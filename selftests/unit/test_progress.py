"""ETA of a long job from the tests already finished (no avocado job)."""

import pytest

from avocado_bgsnap.progress import (EtaModel, Planned, fmt_duration, planned_from_params,
                                     progress_line)


def plan():
    return [Planned(f"scale.{mode}.{mem}.r{r}", mode, mem)
            for mode in ("background", "stop_save") for mem in (256, 1024, 4096)
            for r in (1, 2)]


def test_no_eta_before_the_first_test():
    assert EtaModel(plan()).eta_s() is None


def test_one_finished_test_predicts_every_other_by_its_time():
    model = EtaModel(plan())
    model.finished("scale.background.256.r1", 20.0)
    assert model.eta_s() == pytest.approx(11 * 20.0)


def test_same_point_uses_its_mean_and_other_sizes_a_line_in_ram():
    model = EtaModel(plan())
    model.finished("scale.background.256.r1", 20.0)
    model.finished("scale.background.1024.r1", 30.0)
    assert model.predict(Planned("x", "background", 256)) == pytest.approx(20.0)
    # 20 s at 256 MiB, 30 s at 1 GiB: 4 GiB on the same line is 70 s
    assert model.predict(Planned("x", "background", 4096)) == pytest.approx(70.0)
    # a mode with no finished test borrows the line of all finished tests
    assert model.predict(Planned("x", "stop_save", 4096)) == pytest.approx(70.0)


def test_a_mode_gets_its_own_line_once_it_has_two_sizes():
    model = EtaModel(plan())
    for name, seconds in (("scale.background.256.r1", 20), ("scale.background.1024.r1", 30),
                          ("scale.stop_save.256.r1", 20), ("scale.stop_save.1024.r1", 50)):
        model.finished(name, seconds)
    assert model.predict(Planned("x", "stop_save", 4096)) == pytest.approx(170.0)
    assert model.predict(Planned("x", "background", 4096)) == pytest.approx(70.0)


def test_prediction_never_below_the_fastest_seen():
    model = EtaModel(plan())
    model.finished("scale.background.1024.r1", 30.0)
    model.finished("scale.background.4096.r1", 40.0)
    assert model.predict(Planned("x", "background", 0)) == pytest.approx(30.0)


def test_eta_reaches_zero_and_the_line_says_so():
    model = EtaModel(plan()[:2])
    model.finished(plan()[0].name, 10)
    line = progress_line(model, 65, "scale.background.256.r1 PASS")
    assert "1/2 done" in line and "elapsed 1m05s" in line and "ETA 10s" in line
    assert "next scale.background.256.r2" in line
    model.finished(plan()[1].name, 12)
    assert model.eta_s() == 0
    assert "next" not in progress_line(model, 80, "x")


def test_planned_from_cartesian_params():
    got = planned_from_params("scale.stop_save.2g.r1",
                              {"type": "bgsnap_basic", "mem": "2048", "bgsnap_mode": "stop_save"})
    assert got == Planned("scale.stop_save.2g.r1", "stop_save", 2048.0)
    assert planned_from_params("io-github", {"type": "boot"}) is None


@pytest.mark.parametrize("seconds, text", [(None, "unknown"), (5.4, "5s"), (125, "2m05s"),
                                           (3 * 3600 + 7 * 60, "3h07m")])
def test_durations(seconds, text):
    assert fmt_duration(seconds) == text


def test_parallel_tasks_share_the_remaining_time_but_not_below_the_longest():
    serial, parallel = EtaModel(plan()), EtaModel(plan(), parallel=2)
    for model in (serial, parallel):
        model.finished("scale.background.256.r1", 60.0)
    left = serial.eta_s()
    assert parallel.eta_s() == max(left / 2, max(serial.predict(p) for p in serial.remaining()))
    assert parallel.eta_s() < left
    one_left = EtaModel(plan()[:2], parallel=4)
    one_left.finished(plan()[0].name, 60.0)
    assert one_left.eta_s() == one_left.predict(one_left.remaining()[0])
