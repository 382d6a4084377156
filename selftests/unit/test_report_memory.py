"""report.memconfig / tables.memory_table: the memory family's outcome per configuration x build."""

from test_report_synthetic import make_job, make_record, scale_tests

from avocado_bgsnap.report import build, collect, memconfig, tables

FILE_REASON = ("RAMBlock machine (file(ext4)/shared) is a file on ext4: userfaultfd "
               "write-protects anonymous, shmem and hugetlb memory only")
REFUSAL = ("migrate-set-capabilities failed: ... 'Background-snapshot is not compatible with "
           "guest memory configuration'")


def _block(memory_type, label, path_fs=None):
    return {"name": "machine", "backend": "memory-backend-x", "memory_type": memory_type,
            "label": label, "path_fs": path_fs, "size_mib": 256}


def memory_record(label="memfd/shared, 1 vCPU", memory_type="shmem", build="system",
                  thp="madvise", restore_label=None, **extra):
    """A memory-family record as bgsnap_basic writes it (a pass)."""
    block = _block(memory_type, label.split(",")[0],
                   "ext4" if memory_type == "file" else None)
    memory = {"label": label, "numa_nodes": 0, "vcpus": 1, "blocks": [block]}
    restore = dict(memory, label=restore_label or label)
    record = make_record(build=build, memory=memory, restore_memory=restore,
                         host_memory={"thp_mode": thp, "thp_mode_before": "madvise",
                                      "hugepages_reserved": {}},
                         expected={"supported": True, "reason": f"{memory_type} memory",
                                   "refusal": None},
                         qemu_refusal=None, prediction_check="proceed",
                         qemu_memory_before={"anon_huge_kib": 0, "rss_shmem_kib": 1024})
    record.update(extra)
    return record


def cancelled_record(build="system"):
    """A predicted refusal: the record has no pause and no verdict."""
    record = memory_record("file(ext4)/shared, 1 vCPU", "file", build=build,
                           expected={"supported": False, "reason": FILE_REASON,
                                     "refusal": "not compatible with guest memory configuration"},
                           qemu_refusal=REFUSAL, prediction_check="cancel")
    for key in ("pause_ms", "pause_windows", "verdict", "downtime_ms", "snapshot_total_s",
                "latency_windows", "host_verify"):
        record.pop(key)
    return record


def _point(record, status="PASS", fail_reason=None, test="1-memory.backend.x"):
    return collect.point_from_record(record, job="j", test=test, record_path="p",
                                     status={"status": status, "fail_reason": fail_reason})


def test_point_reads_the_memory_keys():
    point = _point(memory_record(restore_label="ram/private, 1 vCPU",
                                 during_save=[{"action": "balloon", "status_before": "active"}]))
    assert point.memory_label == "memfd/shared, 1 vCPU"
    assert point.restore_memory_label == "ram/private, 1 vCPU"
    assert point.memory_types == ["shmem"] and point.memory_fs == []
    assert point.thp_mode == "madvise" and point.during_actions == ["balloon"]
    assert point.expected_supported is True and point.prediction_check == "proceed"
    assert point.guest_state is None and not point.cancelled
    cancelled = _point(cancelled_record(), status="CANCEL")
    assert cancelled.memory_types == ["file"] and cancelled.memory_fs == ["ext4"]
    assert cancelled.cancelled and cancelled.pause_ms is None
    assert cancelled.expected_supported is False and cancelled.qemu_refusal == REFUSAL
    # without a status (the plugin before results.json) the record tells
    assert _point(cancelled_record(), status=None).cancelled


def test_a_record_missing_the_optional_keys():
    minimal = {"memory": {"label": "ram/private, 1 vCPU"}, "verdict": "pass", "pause_ms": 2.0}
    point = _point(minimal)
    assert point.memory_label == "ram/private, 1 vCPU" and point.restore_memory_label is None
    assert point.memory_types == [] and point.thp_mode is None and point.during_actions == []
    assert point.expected_supported is None and point.prediction_check is None
    (row,) = memconfig.config_rows([point])
    assert row.key == memconfig.ConfigKey("ram/private, 1 vCPU", "?", "?", "")
    assert tables.memory_table([row]).header == ["memory configuration", "host THP", "system"]
    assert row.cell("system") == "PASS 2.00 ms"
    # garbage where a mapping or a list belongs is absent, not a crash
    junk = _point({"memory": "x", "host_memory": [], "expected": 3, "during_save": "y",
                   "restore_memory": {"label": {"no": 1}}})
    assert junk.memory_label is None and junk.thp_mode is None and junk.during_actions == []
    assert junk.restore_memory_label is None and not memconfig.is_memory_point(junk)


def test_cells_per_outcome():
    passed = _point(memory_record(pause_ms=2.3456))
    assert memconfig.cell_text([passed]) == "PASS 2.35 ms"
    assert memconfig.cell_text([passed, _point(memory_record(pause_ms=4.0)),
                                _point(memory_record(pause_ms=3.0))]) == \
        "PASS x3, 3.00 ms median"
    cancel = _point(cancelled_record(), status="CANCEL",
                    fail_reason="unsupported by this host: " + FILE_REASON)
    assert memconfig.cell_text([cancel]) == "CANCEL: predicted: refused, file on ext4"
    long_verdict = "source guest damaged after the snapshot: BAD: 12 pages differ " * 3
    failed = _point(memory_record(verdict=long_verdict), status="FAIL")
    text = memconfig.cell_text([failed])
    assert text.startswith("FAIL: source guest damaged after the snapshot") and text.endswith("…")
    assert len(text) <= len("FAIL: ") + memconfig.REASON_CHARS and " damaged" in text
    # a test stopped before its verdict: avocado's reason
    error = memory_record()
    del error["verdict"]
    assert memconfig.cell_text([_point(error, "ERROR", "not tested: balloon: too late")]) == \
        "ERROR: not tested: balloon: too late"
    assert memconfig.cell_text([passed, failed]).startswith("PASS 2.35 ms; FAIL: ")
    # a predicted refusal that was not (prediction_check fail): the judgement
    wrong = memory_record(prediction_check="fail")
    del wrong["verdict"]
    assert memconfig.cell_text([_point(wrong, "FAIL", "QEMU refused background-snapshot "
                                                      "where the host and build support it")]) \
        == "FAIL: QEMU refused background-snapshot where the host and build…"


def test_refusal_causes():
    kernel = _point(memory_record(memory_type="anon", prediction_check="cancel",
                                  expected={"supported": False, "reason": "no WP",
                                            "refusal": "not supported by host kernel"}), "CANCEL")
    assert memconfig.refusal_cause(kernel) == "host kernel has no userfaultfd write-protect"
    shmem = _point(memory_record(memory_type="shmem", prediction_check="cancel",
                                 expected={"supported": False, "reason": "lacks WP_HUGETLBFS",
                                           "refusal": "not compatible"}), "CANCEL")
    assert memconfig.refusal_cause(shmem) == "shmem"
    blind = _point({"memory": {"label": "x"}, "prediction_check": "cancel",
                    "expected": {"reason": "something the suite said"}}, "CANCEL")
    assert memconfig.refusal_cause(blind) == "something the suite said"


def test_suspended_guest_without_a_pause_window():
    record = memory_record(guest_state="S3", pause_ms=None, pause_windows=[],
                           pause_note="no pause window: the guest was suspended",
                           suspended_save={"status_before": "suspended",
                                           "status_after": "suspended", "events": [],
                                           "woke": False})
    point = _point(record)
    assert point.guest_state == "S3" and point.pause_ms is None
    assert memconfig.config_key(point).during == "guest S3"
    assert memconfig.cell_text([point]) == "PASS (no pause window)"
    # a suspended record without memory key still is a row (its RAM unknown)
    bare = {"suspended_save": {"woke": True}, "verdict": "the background snapshot woke it",
            "guest_mem_mib": 256}
    row_point = _point(bare, "FAIL")
    assert memconfig.is_memory_point(row_point)
    assert memconfig.config_key(row_point).memory == memconfig.NOT_RECORDED
    assert memconfig.config_key(row_point).during == "guest suspended"
    other = _point(memory_record(restore_label="ram/private, 1 vCPU"))
    rows = memconfig.config_rows([point, row_point, other])
    assert [r[1] for r in tables.memory_table(rows).rows] == ["same", "?", "ram/private, 1 vCPU"]
    assert not memconfig.has_memory_records([row_point])


def _matrix():
    """system and qemu10: 3 configurations each, one refused, one failing on qemu10."""
    points = []
    for build in ("qemu10", "system"):        # qemu10 first: the columns still start at system
        points.append(_point(memory_record(build=build, pause_ms=2.0)))
        points.append(_point(cancelled_record(build=build), "CANCEL"))
        verdict = "pause 30.0 ms exceeds max_pause_ms = 20" if build == "qemu10" else "pass"
        points.append(_point(memory_record("ram/private, 1 vCPU", "anon", build=build,
                                           thp="always", verdict=verdict),
                             "FAIL" if build == "qemu10" else "PASS"))
        points.append(_point(memory_record("memfd/shared, 1 vCPU", build=build,
                                           restore_label="ram/private, 1 vCPU",
                                           during_save=[{"action": "virtio_mem"}])))
    points.append(_point(make_record()))       # a non-memory run: not a row
    return points


def test_rows_and_table_shape():
    rows = memconfig.config_rows(_matrix())
    assert [memconfig.row_label(r.key) for r in rows] == [
        "memfd/shared, 1 vCPU", "file(ext4)/shared, 1 vCPU", "ram/private, 1 vCPU",
        "memfd/shared, 1 vCPU -> ram/private, 1 vCPU, virtio_mem"]
    assert memconfig.row_builds(rows) == ["system", "qemu10"]
    table = tables.memory_table(rows)
    assert table.header == ["memory configuration", "restored into", "host THP",
                            "during the save", "system", "qemu10"]
    assert table.rows[0] == ["memfd/shared, 1 vCPU", "same", "madvise", "-",
                             "PASS 2.00 ms", "PASS 2.00 ms"]
    assert table.rows[2][2] == "always" and table.rows[2][5].startswith("FAIL: pause 30.0 ms")
    assert table.rows[3][1:4] == ["ram/private, 1 vCPU", "madvise", "virtio_mem"]
    assert table.footer == memconfig.answer_line(rows)
    # the optional columns go when no row needs them
    plain = tables.memory_table(memconfig.config_rows([_point(memory_record())]))
    assert plain.header == ["memory configuration", "host THP", "system"]


def test_answer_line_per_build():
    line = memconfig.answer_line(memconfig.config_rows(_matrix()))
    assert line == (
        "Does background snapshot work, exactly, for these memory configurations? "
        "system: yes, 3 verified, 1 refused as predicted (file on ext4); "
        "qemu10: NO, 2 verified, 1 FAILED (ram/private, 1 vCPU), "
        "1 refused as predicted (file on ext4)")
    only_refused = memconfig.config_rows([_point(cancelled_record(), "CANCEL")])
    assert memconfig.answer_line(only_refused).endswith(
        "system: no, every configuration refused as predicted, 1 refused as predicted "
        "(file on ext4)")
    errored = memory_record()
    del errored["verdict"]
    rows = memconfig.config_rows([_point(memory_record()), _point(errored, "ERROR", "x")])
    assert memconfig.answer_line(rows).endswith(
        "system: not all tested, 1 ERROR, no verdict (memfd/shared, 1 vCPU)")
    # two rows that differ only by THP are named with it
    rows = memconfig.config_rows([_point(memory_record(thp="never")),
                                  _point(memory_record(thp="always", verdict="bad"), "FAIL")])
    assert "1 FAILED (memfd/shared, 1 vCPU, THP always)" in memconfig.answer_line(rows)


def test_the_mode_is_named_when_not_background_the_transport_never():
    slow = _point(memory_record(transport={"name": "slow"}))
    stop = _point(memory_record(mode="stop_save"))
    assert [memconfig.config_key(p).memory for p in (slow, stop)] == [
        "memfd/shared, 1 vCPU", "memfd/shared, 1 vCPU [stop_save]"]


def test_cancelled_runs_are_no_pause_sample_and_no_failure():
    points = [_point(memory_record(pause_ms=2.0)), _point(cancelled_record(), "CANCEL")]
    (series,) = collect.group_series(points)
    assert series.n == 1 and series.n_failed == 0


def test_report_shows_the_table_only_for_memory_jobs(tmp_path):
    job = make_job(tmp_path, "job-mem", [
        ("memory.backend.memfd_shared", memory_record(), "PASS"),
        ("memory.backend.disk_file", cancelled_record(), "CANCEL"),
        ("qemu10.memory.backend.memfd_shared", memory_record(build="qemu10"), "PASS")])
    result = build.make_report([job])
    text = (result.outdir / "summary.md").read_text()
    assert result.answers[0].startswith(memconfig.QUESTION)
    assert "## Memory configurations" in text
    assert "| memory configuration | host THP | system | qemu10 |" in text
    assert ("| file(ext4)/shared, 1 vCPU | madvise | CANCEL: predicted: refused, file on ext4 "
            "| - |") in text
    assert "**" + memconfig.QUESTION + " system: yes, 1 verified" in text
    assert "1 cancelled run(s) took no snapshot" in text
    page = (result.outdir / "summary.html").read_text()
    assert '<td class="cancel">CANCEL: predicted' in page and '<td class="pass">PASS' in page
    assert '<p class="answer">' + memconfig.QUESTION in page
    plain = make_job(tmp_path, "job-plain", scale_tests(reps=1, sizes=(256,)))
    result = build.make_report([plain])
    assert "Memory configurations" not in (result.outdir / "summary.md").read_text()
    assert not any(a.startswith(memconfig.QUESTION) for a in result.answers)
