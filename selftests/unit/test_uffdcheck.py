"""uffdcheck: the report parser, the table, the verdicts; one real run of the C check."""

import dataclasses
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from avocado_bgsnap import host, uffdcheck
from avocado_bgsnap.host import ksm as host_ksm
from avocado_bgsnap.host import memory
from avocado_bgsnap.uffdcheck import FAIL, PASS, UNSUPPORTED, CheckOptions


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path, monkeypatch):
    """A full run keeps its result per kernel in the state dir: not the real one."""
    monkeypatch.setattr(uffdcheck.paths, "state_dir", lambda: tmp_path / "state")


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


KSM_LOST = case("wp-ksm", result=FAIL, reason="1536 of 2048 KSM-merged pages lost write "
                "protection", pages=2048, pages_merged=2048, pages_merged_before_writes=2048,
                merged_uffd_wp_before_writes=512, merged_writes_without_fault=1536,
                ksm_wait_s=0.05, wp_faults=512)
KSM_PREMERGED = case("wp-ksm-premerged", pages=2048, pages_merged=2040,
                     merged_uffd_wp_before_protect=0, pages_merged_before_writes=2044,
                     merged_uffd_wp_before_writes=2044, merged_writes_without_fault=0,
                     ksm_wait_s=0.1, wp_faults=2048)


def test_ksm_merges_and_their_table_lines():
    report = uffdcheck.parse_report(document(
        case(), KSM_LOST, KSM_PREMERGED,
        case("wp-ksm", "anon-thp", UNSUPPORTED, "not a KSM type")))
    merges = report.ksm_merges()
    assert merges["wp-ksm"] == {"result": FAIL, "pages": 2048, "merged": 2048,
                                "merged_uffd_wp": 512, "writes_without_fault": 1536,
                                "wait_s": 0.05}
    # what the writes met: the count after protecting, not the one after merging
    assert merges["wp-ksm-premerged"]["merged"] == 2044
    assert report.to_dict()["ksm_merges"] == merges
    lines = uffdcheck.render_table(report).splitlines()
    assert ("KSM (wp-ksm): 2048 of 2048 pages merged in 0.05 s, 512 of them still uffd-wp, "
            "1536 writes to merged pages without a fault") in lines
    assert any(line.startswith("KSM (wp-ksm-premerged): 2044 of 2048") for line in lines)
    v = uffdcheck.verdict(report)
    assert v.status == "FAIL" and "wp-ksm[anon]: 1536 of 2048 KSM-merged pages" in v.message


def test_ksm_merges_skips_cases_that_merged_nothing():
    report = uffdcheck.parse_report(document(
        case("wp-ksm", result=UNSUPPORTED, reason="needs root to run ksmd"),
        case("wp-ksm-premerged", result=UNSUPPORTED,
             reason="KSM merged nothing within 20 s", pages_merged=0, ksm_wait_s=20)))
    merges = report.ksm_merges()
    assert list(merges) == ["wp-ksm-premerged"] and merges["wp-ksm-premerged"]["merged"] == 0
    assert uffdcheck.verdict(report).status == "CANCEL"


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
                                              "--case-timeout", "30.0", "--ksm-wait", "20"]
    assert CheckOptions(ksm_wait_s=2.5).arguments(None, "needs root to run ksmd")[-4:] == \
        ["--ksm-wait", "2.5", "--skip-ksm", "needs root to run ksmd"]
    neg = CheckOptions(negative=True).arguments("needs root to reserve hugepages")
    assert neg[-5:] == ["--no-protect", "--case", "wp-basic,wp-ksm,wp-ksm-premerged",
                        "--skip-hugetlb", "needs root to reserve hugepages"]
    assert CheckOptions(cases=("wp-fork",), memory_types=("anon", "shmem")).arguments(None)[-4:] \
        == ["--case", "wp-fork", "--memory", "anon,shmem"]
    assert CheckOptions(memory_types=("anon",)).wants_hugetlb is False
    # ksmd only when a KSM case (anon) can run
    assert CheckOptions().wants_ksm and CheckOptions(cases=("wp-ksm",)).wants_ksm
    assert CheckOptions(cases=("wp-basic", "wp-ksm-premerged"), memory_types=("anon",)).wants_ksm
    assert not CheckOptions(cases=("wp-basic",)).wants_ksm
    assert not CheckOptions(memory_types=("shmem",)).wants_ksm
    assert CheckOptions(negative=True).wants_ksm    # wp-basic and the KSM cases
    assert not CheckOptions(negative=True, cases=("wp-basic",)).wants_ksm
    assert CheckOptions().wants_hugetlb and CheckOptions(memory_types=("hugetlb",)).wants_hugetlb


@pytest.fixture(autouse=True)
def no_real_ksmd(monkeypatch):
    """The host's ksmd stays untouched: run_check sees a non-root caller unless a test
    says otherwise (and then fakes host.ksm.ksm_control)."""
    monkeypatch.setattr(uffdcheck, "_is_root", lambda: False)


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
    assert ("--skip-hugetlb needs root to reserve hugepages (16 x 2048 kB) --"
            in report.host["args"])
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
    uffdcheck.run_check(CheckOptions(cases=("wp-basic",), memory_types=("anon",)),
                        binary=fake_check, log=events.append)
    assert events == []


def test_run_check_says_ksm_needs_root(fake_check, monkeypatch):
    monkeypatch.setattr(uffdcheck, "_is_root", lambda: False)
    entered = []
    monkeypatch.setattr(host_ksm, "ksm_control", lambda: entered.append(1))
    logged = []
    report = uffdcheck.run_check(CheckOptions(hugepages=0), binary=fake_check,
                                 log=logged.append)
    assert report.host["args"].endswith("--skip-ksm needs root to run ksmd")
    assert entered == [] and "KSM cases unsupported: needs root to run ksmd" in logged


def test_run_check_runs_ksmd_around_the_run_and_puts_it_back(fake_check, monkeypatch):
    from contextlib import contextmanager
    events = []

    class Control:
        original = {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20}

        def start(self, pages_to_scan, sleep_millisecs):
            events.append(("start", pages_to_scan, sleep_millisecs))

    @contextmanager
    def control():
        events.append("snapshot")
        yield Control()
        events.append("restore")
    monkeypatch.setattr(uffdcheck, "_is_root", lambda: True)
    monkeypatch.setattr(host_ksm, "ksm_control", control)
    report = uffdcheck.run_check(CheckOptions(hugepages=0), binary=fake_check,
                                 log=lambda line: None)
    assert events == ["snapshot", ("start", 8192, 10), "restore"]
    assert "--skip-ksm" not in report.host["args"]
    # no KSM case asked for: ksmd left alone
    events.clear()
    uffdcheck.run_check(CheckOptions(hugepages=0, cases=("wp-basic",)), binary=fake_check)
    assert events == []

    # no KSM on the kernel: the refusal is the reason, nothing to restore
    def refuse():
        raise memory.HostMemoryUnavailable(
            "no KSM on this kernel (/sys/kernel/mm/ksm/run missing)")
    monkeypatch.setattr(host_ksm, "ksm_control", refuse)
    report = uffdcheck.run_check(CheckOptions(hugepages=0), binary=fake_check,
                                 log=lambda line: None)
    assert report.host["args"].endswith("--skip-ksm no KSM on this kernel "
                                        "(/sys/kernel/mm/ksm/run missing)")


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


def test_the_last_full_check_of_this_kernel_goes_into_every_job(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    assert uffdcheck.store_in_job(job) is None          # never checked: nothing copied
    report = dataclasses.replace(uffdcheck.parse_report(document(case(), LATENCY)),
                                 kernel=os.uname().release)
    uffdcheck._remember(report)
    copied = uffdcheck.store_in_job(job)
    assert json.loads(copied.read_text()) == report.to_dict()
    assert "UFFD-WP self-check" in copied.with_suffix(".txt").read_text()
