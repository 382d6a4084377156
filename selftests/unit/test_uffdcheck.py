"""uffdcheck: the report parser, the table, the verdicts; one real run of the C check."""

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from avocado_bgsnap import host, uffdcheck
from avocado_bgsnap.host import memory
from avocado_bgsnap.uffdcheck import FAIL, PASS, UNSUPPORTED, CheckOptions


def case(name="wp-basic", memory_type="anon", result=PASS, reason="", **figures):
    return {"name": name, "memory_type": memory_type, "result": result, "reason": reason,
            "figures": figures}


def document(*cases, no_protect=False, aborted=None):
    summary = {"pass": 0, "fail": 0, "unsupported": 0}
    if aborted:
        summary["aborted"] = aborted
    return json.dumps({"tool": "bgsnap-uffd-check", "format": 1, "kernel": "6.18.0",
                       "machine": "x86_64", "features": "0x1ffff",
                       "feature_names": ["PAGEFAULT_FLAG_WP", "EVENT_FORK"],
                       "no_protect": no_protect, "swap_total_kib": 0, "cases": list(cases),
                       "summary": summary})


LATENCY = case("fault-latency", wp_faults=4096, fault_n=4096, fault_p50_us=11.2,
               fault_p99_us=42.9, fault_max_us=986.7, fault_mean_us=13.2)


# -- parsing -----------------------------------------------------------------

def test_parse_report_types_every_field():
    report = uffdcheck.parse_report(document(
        case(wp_faults=4096, fault_p50_us=17.2), LATENCY,
        case("wp-basic", "hugetlb", UNSUPPORTED, "needs root to reserve hugepages")))
    assert report.kernel == "6.18.0" and report.features == 0x1FFFF
    assert report.feature_names == ("PAGEFAULT_FLAG_WP", "EVENT_FORK")
    assert report.no_protect is False and report.aborted is None
    assert report.host["swap_total_kib"] == 0 and "cases" not in report.host
    first = report.cases[0]
    assert (first.name, first.memory_type, first.result) == ("wp-basic", "anon", PASS)
    assert first.figures["wp_faults"] == 4096 and first.label == "wp-basic[anon]"
    assert [c.label for c in report.supported] == ["wp-basic[anon]", "fault-latency[anon]"]
    assert report.counts() == {PASS: 2, FAIL: 0, UNSUPPORTED: 1}
    assert report.fault_round_trip() == {"n": 4096, "p50_us": 11.2, "p99_us": 42.9,
                                         "max_us": 986.7, "mean_us": 13.2}
    again = report.to_dict()
    assert again["features"] == "0x1ffff" and again["summary"][PASS] == 2
    assert again["cases"][2]["reason"] == "needs root to reserve hugepages"


def test_parse_report_keeps_the_watchdog_abort():
    report = uffdcheck.parse_report(document(case(result=FAIL, reason="timed out"),
                                             aborted="watchdog: a case hung"))
    assert report.aborted == "watchdog: a case hung"


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ('{"tool": "other"}', "not a bgsnap-uffd-check report"),
    (document({"name": "wp-basic"}), "without name/memory_type/result"),
    (document(case(result="maybe")), "unknown result 'maybe'"),
])
def test_parse_report_refuses_other_documents(text, message):
    with pytest.raises(ValueError, match=message):
        uffdcheck.parse_report(text)


def test_fault_round_trip_is_empty_without_the_latency_case():
    assert uffdcheck.parse_report(document(case())).fault_round_trip() == {}


# -- table -------------------------------------------------------------------

def test_render_table_rows_figures_and_round_trip():
    report = uffdcheck.parse_report(document(
        case(wp_faults=4096, fault_p50_us=17.25, fault_p99_us=68.1), LATENCY,
        case("wp-mremap", "anon-thp", FAIL, "uffd-wp bit left on 12 PTEs"),
        case("wp-basic", "hugetlb", UNSUPPORTED, "needs root")))
    lines = uffdcheck.render_table(report).splitlines()
    assert lines[0] == "UFFD-WP self-check: kernel 6.18.0, features 0x1ffff"
    assert lines[1].split() == ["CASE", "MEMORY", "RESULT", "FAULTS", "P50_US", "P99_US",
                                "REASON"]
    assert lines[2].split() == ["wp-basic", "anon", "pass", "4096", "17.25", "68.1"]
    assert lines[4].split()[:3] == ["wp-mremap", "anon-thp", "FAIL"]
    assert lines[4].endswith("uffd-wp bit left on 12 PTEs")
    assert lines[5].split() == ["wp-basic", "hugetlb", "unsupported", "needs", "root"]
    # the columns line up
    assert {line.index(line.split()[1]) for line in lines[1:6]} == {lines[1].index("MEMORY")}
    assert "p50 11.2 µs, p99 42.9 µs, max 986.7 µs (n=4096)" in lines[6]
    assert lines[-1] == "2 pass, 1 FAIL, 1 unsupported"


def test_render_table_says_negative_control():
    report = uffdcheck.parse_report(document(case(result=FAIL), no_protect=True))
    assert "NEGATIVE CONTROL" in uffdcheck.render_table(report).splitlines()[0]


def test_write_json_round_trips(tmp_path):
    report = uffdcheck.parse_report(document(case(), LATENCY))
    data = json.loads(uffdcheck.write_json(report, tmp_path / "u.json").read_text())
    assert data["fault_round_trip_us"]["p50_us"] == 11.2 and len(data["cases"]) == 2


# -- verdicts ----------------------------------------------------------------

def verdict_of(*cases, **kw):
    return uffdcheck.verdict(uffdcheck.parse_report(document(*cases, **kw)))


def test_verdict_pass_counts_the_unsupported():
    v = verdict_of(case(), case("wp-basic", "hugetlb", UNSUPPORTED, "no pages"))
    assert v.status == "PASS" and "1 case(s) pass, 1 unsupported" in v.message


def test_verdict_fail_names_each_failed_case():
    v = verdict_of(case(), case("wp-fork", "shmem", FAIL, "3 of 4096 pages without a fault"),
                   case("wp-mremap", "anon", FAIL, "stale bits"))
    assert v.status == "FAIL"
    assert "2 case(s) FAILED" in v.message
    assert "wp-fork[shmem]: 3 of 4096 pages without a fault" in v.message
    assert "wp-mremap[anon]: stale bits" in v.message


def test_verdict_cancels_only_when_nothing_is_supported():
    v = verdict_of(case(result=UNSUPPORTED, reason="userfaultfd cannot be opened: EPERM"),
                   case("wp-basic", "shmem", UNSUPPORTED, "userfaultfd cannot be opened: EPERM"))
    assert v.status == "CANCEL" and v.message.endswith("userfaultfd cannot be opened: EPERM")
    assert verdict_of().status == "CANCEL"
    assert verdict_of(case(), case(result=UNSUPPORTED)).status == "PASS"


def test_verdict_fails_an_aborted_run():
    assert verdict_of(case(), aborted="watchdog").status == "FAIL"


def negative_of(*cases, no_protect=True):
    return uffdcheck.negative_verdict(uffdcheck.parse_report(document(*cases,
                                                                      no_protect=no_protect)))


def test_negative_verdict_passes_when_every_supported_case_failed():
    v = negative_of(case(result=FAIL, reason="4096 of 4096 pages"),
                    case("wp-basic", "shmem", FAIL), case("wp-basic", "hugetlb", UNSUPPORTED))
    assert v.status == "PASS" and "all 2 case(s) FAILED" in v.message


def test_negative_verdict_fails_when_a_case_passed_unprotected():
    v = negative_of(case(result=FAIL), case("wp-basic", "shmem"))
    assert v.status == "FAIL" and "wp-basic[shmem]" in v.message
    assert "wp-basic[anon]" not in v.message


def test_negative_verdict_cancel_and_wrong_run():
    assert negative_of(case(result=UNSUPPORTED, reason="x")).status == "CANCEL"
    assert negative_of(case(result=FAIL), no_protect=False).status == "FAIL"


# -- options and running -------------------------------------------------------

def test_options_arguments():
    assert CheckOptions().arguments(None) == ["--mib", "16", "--writers", "2",
                                              "--case-timeout", "30.0"]
    neg = CheckOptions(negative=True).arguments("needs root to reserve hugepages")
    assert neg[-5:] == ["--no-protect", "--case", "wp-basic", "--skip-hugetlb",
                        "needs root to reserve hugepages"]
    assert CheckOptions(cases=("wp-fork",), memory_types=("anon", "shmem")).arguments(None)[-4:] \
        == ["--case", "wp-fork", "--memory", "anon,shmem"]
    assert CheckOptions(memory_types=("anon",)).wants_hugetlb is False
    assert CheckOptions().wants_hugetlb and CheckOptions(memory_types=("hugetlb",)).wants_hugetlb


@pytest.fixture
def fake_check(tmp_path):
    """A stand-in binary: prints a report naming its arguments, exits with $FAKE_RC."""
    script = tmp_path / "fake-check"
    script.write_text(textwrap.dedent("""\
        #!/bin/sh
        printf '{"tool": "bgsnap-uffd-check", "kernel": "k", "features": "0x1",
                 "args": "%s", "cases": [], "summary": {}}' "$*"
        exit ${FAKE_RC:-0}
        """))
    script.chmod(0o755)
    return script


def test_run_check_passes_the_hugepage_refusal_as_the_skip_reason(fake_check, monkeypatch):
    def refuse(pages, size_kib):
        assert (pages, size_kib) == (16, 2048)
        raise memory.HostMemoryUnavailable("needs root to reserve hugepages (16 x 2048 kB)")
    monkeypatch.setattr(memory, "reserved_hugepages", refuse)
    logged = []
    report = uffdcheck.run_check(CheckOptions(), binary=fake_check, log=logged.append)
    assert report.host["args"].endswith(
        "--skip-hugetlb needs root to reserve hugepages (16 x 2048 kB)")
    assert "hugetlb cases unsupported" in logged[0]


def test_run_check_reserves_hugepages_around_the_run(fake_check, monkeypatch):
    from contextlib import contextmanager
    events = []

    @contextmanager
    def reserve(pages, size_kib):
        events.append("reserve")
        yield memory.HugepagePool(size_kib, pages, pages, 0)
        events.append("restore")
    monkeypatch.setattr(memory, "reserved_hugepages", reserve)
    report = uffdcheck.run_check(CheckOptions(), binary=fake_check, log=events.append)
    assert events[0] == "reserve" and events[-1] == "restore"
    assert "--skip-hugetlb" not in report.host["args"]
    # no hugetlb type asked for: no reservation at all
    events.clear()
    uffdcheck.run_check(CheckOptions(memory_types=("anon",)), binary=fake_check,
                        log=events.append)
    assert events == []


def test_run_check_errors(fake_check, monkeypatch, tmp_path):
    options = CheckOptions(hugepages=0)
    monkeypatch.setenv("FAKE_RC", "1")  # a FAILed case: still a report
    assert uffdcheck.run_check(options, binary=fake_check).kernel == "k"
    monkeypatch.setenv("FAKE_RC", "2")
    with pytest.raises(uffdcheck.UffdCheckError, match="exited with 2"):
        uffdcheck.run_check(options, binary=fake_check)
    with pytest.raises(uffdcheck.UffdCheckError, match="cannot run"):
        uffdcheck.run_check(options, binary=tmp_path / "missing")


# -- the real binary -----------------------------------------------------------

def _real_check_or_skip(tmp_path_factory) -> Path:
    if os.uname().sysname != "Linux":
        pytest.skip("userfaultfd is Linux-only")
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    info = host.probe_uffd()
    if not info.available or not info.wp:
        pytest.skip(f"no userfaultfd write-protect here: {info.reason}")
    return uffdcheck.build_check(tmp_path_factory.mktemp("uffdcheck"), static=False)


@pytest.fixture(scope="module")
def real_check(tmp_path_factory):
    return _real_check_or_skip(tmp_path_factory)


def test_real_anon_passes_and_the_negative_control_fails(real_check):
    only_anon = dict(cases=("wp-basic",), memory_types=("anon",), hugepages=0, mib=8)
    report = uffdcheck.run_check(CheckOptions(**only_anon), binary=real_check)
    anon = report.case("wp-basic", "anon")
    assert anon is not None and anon.result == PASS, anon
    assert anon.figures["wp_faults"] >= anon.figures["pages"] == 2048
    assert anon.figures["pages_without_fault"] == 0
    assert uffdcheck.verdict(report).status == "PASS"

    negative = uffdcheck.run_check(CheckOptions(negative=True, **only_anon), binary=real_check)
    anon = negative.case("wp-basic", "anon")
    assert negative.no_protect and anon.result == FAIL
    assert "written after protection without a fault" in anon.reason
    assert uffdcheck.verdict(negative).status == "FAIL"
    assert uffdcheck.negative_verdict(negative).status == "PASS"
