"""Result plugin: write ``<job>/bgsnap-report/`` at the end of every job with bgsnap records.

Entry point ``avocado.plugins.result`` ``bgsnap-report`` (setup.py).  It
runs at low priority, after avocado's own result plugins (json, xunit,
html), and never fails the job: any error is logged as a warning.  A job
without a snapshot record (no ``bgsnap-metrics.json``, or only negative
controls and the workload benchmark) gets no report and no message.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from avocado.core.extension_manager import PluginPriority
from avocado.core.output import LOG_UI
from avocado.core.plugin_interfaces import Result

from . import collect


def _statuses(result) -> dict[str, dict]:
    """avocado's in-memory statuses, keyed like results.json's logdir basename."""
    out = {}
    for test in getattr(result, "tests", None) or []:
        logdir = test.get("logdir")
        if not logdir:
            continue
        name = test.get("name")
        name = f"{name.name}{name.str_variant}" if hasattr(name, "str_variant") else name
        out[Path(logdir).name] = {"status": test.get("status"),
                                  "name": str(name) if name is not None else None,
                                  "fail_reason": test.get("fail_reason")}
    return out


# avocado-framework-plugin-result-html renders <job>/results.html from a
# fixed template with no place for another plugin's link.  This adds one row,
# "bgsnap report", after its "Results Dir" row, and touches nothing else;
# a page of another shape is left as it is.  Remove when the template gains
# an extension point.  (The html plugin writes no page for a FAILed job.)
HTML_PAGE = "results.html"
HTML_ANCHOR = "<td>Results Dir</td>"


def link_from_avocado_html(job_dir: Path, report_html: Path) -> bool:
    """Add a link to ``report_html`` in ``job_dir``'s avocado HTML page;
    True when the page links to it afterwards."""
    page = job_dir / HTML_PAGE
    try:
        text = page.read_text(encoding="utf-8")
    except OSError:
        return False
    href = os.path.relpath(report_html, job_dir)
    if f'href="{href}"' in text:
        return True
    anchor = text.find(HTML_ANCHOR)
    row_end = text.find("</tr>", anchor) if anchor >= 0 else -1
    if row_end < 0:
        return False
    row_end += len("</tr>")
    row = (f'\n            <tr>\n              <td>bgsnap report</td>\n'
           f'              <td><a href="{html.escape(href)}"><samp>{html.escape(href)}</samp>'
           f'</a> (true pause per mode and RAM, plots, A/B)</td>\n            </tr>')
    page.write_text(text[:row_end] + row + text[row_end:], encoding="utf-8")
    return True


def confirm_ab_flags(logdir: Path, points, config) -> None:
    """At the end of an ``avocado run ab`` job: re-run its flags between QEMU
    builds, A and B interleaved, before the report is written, so that the
    report tells confirmed flags from chance (report/confirm_run.py).
    ``bgsnap.confirm_runs = 0`` in avocado's config turns it off; the re-run
    job itself never confirms again."""
    from . import confirm_run

    if not confirm_run.is_ab_job(points) or confirm_run.confirming():
        return
    runs = config.get("bgsnap.confirm_runs")
    runs = confirm_run.DEFAULT_RUNS if runs is None else int(runs)
    if runs <= 0:
        LOG_UI.info("bgsnap: A/B flags are not re-run (bgsnap.confirm_runs = 0): the report "
                    "marks them unconfirmed")
        return
    try:
        confirmations = confirm_run.confirm_job(
            logdir, runs, lambda msg: LOG_UI.info("bgsnap: %s", msg))
    except Exception as exc:  # pylint: disable=W0703 - never fail a job for it
        LOG_UI.warning("bgsnap: A/B flags not confirmed: %s: %s", type(exc).__name__, exc)
        return
    for c in confirmations:
        LOG_UI.info("bgsnap: %s", confirm_run.describe(c))


class BgsnapReportResult(Result):
    name = "bgsnap-report"
    description = "avocado-bgsnap report (tables + plots) in <job>/bgsnap-report/"
    priority = PluginPriority.LOW

    def render(self, result, job):
        try:  # every job carries the last UFFD-WP self-check of this kernel
            from .. import uffdcheck  # the avocado face may reach below the report

            uffdcheck.store_in_job(Path(job.logdir))
        except Exception as exc:  # pylint: disable=W0703 - never fail a job for it
            LOG_UI.warning("bgsnap: the kernel's UFFD-WP self-check not copied: %s", exc)
        try:
            logdir = Path(job.logdir)
            if not collect.record_files(logdir):
                return
            statuses = _statuses(result)
            points = collect.load_points([logdir], statuses)
            if not any(p.kind == collect.KIND_SNAPSHOT for p in points):
                return  # only negative controls / the workload benchmark: nothing to plot
            from .build import make_report  # matplotlib/scipy only when there is data

            confirm_ab_flags(logdir, points, job.config)
            report = make_report([logdir], statuses=statuses)
        except Exception as exc:  # pylint: disable=W0703 - a report must never fail a job
            LOG_UI.warning("bgsnap report not written: %s: %s", type(exc).__name__, exc)
            return
        try:
            linked = link_from_avocado_html(logdir, report.files["html"])
        except OSError as exc:
            LOG_UI.warning("bgsnap report: could not link it from %s: %s", HTML_PAGE, exc)
            linked = False
        if job.config.get("stdout_claimed_by", None) is None:
            LOG_UI.info("BGSNAP REPORT: %s%s", report.files["html"],
                        " (linked from results.html)" if linked else "")
            for check in report.shape_failures:
                LOG_UI.warning("BGSNAP SHAPE FAILED: %s", check.line)
