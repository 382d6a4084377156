"""Write a report's files: summary.md, summary.html, points.csv, points.json.

The HTML is one self-contained file (inline CSS, no script, nothing
fetched); the PNGs sit beside it and are referenced by relative path, so the
report dir can be copied or served as it is.
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import collect
from .plots import Plot
from .tables import Table

SUMMARY_MD, SUMMARY_HTML = "summary.md", "summary.html"
POINTS_CSV, POINTS_JSON = "points.csv", "points.json"
POINTS_SCHEMA = 1

# points.csv: one row per run; the raw STOP/RESUME stamps as stop_s/resume_s
# (first window) and pause_windows (all, JSON).
CSV_COLUMNS = (
    "job", "test", "name", "status", "verdict", "ok", "kind", "qemu_build", "qemu_version",
    "accel", "mode", "transport", "mode_label", "negative_control", "guest_mem_mib",
    "workload_mib", "workload", "repetition", "pause_ms", "missing_resume", "stop_s",
    "resume_s", "pause_windows", "downtime_ms", "snapshot_total_s", "snapshot_bytes",
    "snapshot_mib", "ram_transferred_bytes", "boot_s", "fill_s", "restore_s", "dump_s",
    "verify_s", "phase_s", "mib_s_before", "mib_s_during", "mib_s_after", "dip_pct",
    "stall_p99_us", "stall_max_ms", "rss_before_kib", "rss_after_kib", "source_peak_rss_kib",
    "restored_peak_rss_kib", "disk_bytes_peak", "host_verify",
    "memory_label", "restore_memory_label", "memory_types", "thp_mode", "during_actions",
    "guest_state", "expected_supported", "qemu_refusal", "prediction_check", "pause_note",
    "cancelled", "record_path")


@dataclass
class Report:
    """Everything a summary shows, computed before any rendering."""

    title: str
    sources: list[str]                      # job dirs read
    answers: list[str] = field(default_factory=list)    # the lines a person reads first
    warnings: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    points_table: Table | None = None


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return repr(value)  # full precision: stamps are epoch seconds
    return str(value)


def write_points_csv(points: Sequence[collect.Point], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for point in points:
            data = point.to_dict()
            data.update(fill_s=point.fill_s, restore_s=point.restore_s, dump_s=point.dump_s,
                        verify_s=point.verify_s)
            writer.writerow([_csv_value(data.get(column)) for column in CSV_COLUMNS])
    return path


def write_points_json(points: Sequence[collect.Point], sources: Sequence[str],
                      path: Path) -> Path:
    payload = {"schema": POINTS_SCHEMA, "jobs": list(sources),
               "points": [p.to_dict() for p in points]}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n",
                    encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table, level: str = "##") -> list[str]:
    lines = [f"{level} {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    if not table.rows:
        return lines + ["(no data)", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
    lines.append("|" + "|".join("---" for _ in table.header) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    lines.append("")
    return lines + ([f"**{table.footer}**", ""] if table.footer else [])


def markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"Jobs: {', '.join(f'`{s}`' for s in report.sources)}", ""]
    lines += [f"* {a}" for a in report.answers] + ([""] if report.answers else [])
    if report.warnings:
        lines += ["Warnings:", ""] + [f"* {w}" for w in report.warnings] + [""]
    for table in report.tables:
        lines += _md_table(table)
    if report.plots:
        lines += ["## Plots", ""]
        for plot in report.plots:
            lines += [f"### {plot.title}", "", f"![{plot.title}]({plot.filename})", "",
                      plot.caption, ""]
    if report.points_table is not None:
        lines += _md_table(report.points_table)
    lines += ["Raw figures of every run: [points.csv](points.csv), [points.json](points.json)."
              " How the A/B verdict is made: docs/report.md.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
td.regression, td.fail { background: #fde2e2 !important; font-weight: bold; }
td.improvement, td.pass { background: #e2f5e2 !important; }
td.cancel { background: #f3f0e0 !important; }
.answer { font-size: 1.05em; padding: 0.5em 0.8em; background: #f4f7fb;
          border-left: 4px solid #1f77b4; margin: 0.3em 0; }
.warning { color: #8a4b00; }
.note { color: #555; font-size: 0.9em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
details summary { cursor: pointer; font-weight: bold; margin: 1em 0; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""


def _cell_class(text: str) -> str:
    if text.startswith("regression"):
        return ' class="regression"'
    if text.startswith("improvement"):
        return ' class="improvement"'
    if text.startswith("FAIL") or text.startswith("ERROR"):
        return ' class="fail"'
    if text.startswith("CANCEL"):
        return ' class="cancel"'
    if text.startswith("PASS"):
        return ' class="pass"'
    return ""


def _html_table(table: Table) -> str:
    out = [f"<h2>{html.escape(table.title)}</h2>"]
    if table.note:
        out.append(f'<p class="note">{html.escape(table.note)}</p>')
    if not table.rows:
        return "\n".join(out + ["<p>(no data)</p>"])
    out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>"
                                              for h in table.header) + "</tr></thead><tbody>")
    for row in table.rows:
        out.append("<tr>" + "".join(f"<td{_cell_class(str(c))}>{html.escape(str(c))}</td>"
                                    for c in row) + "</tr>")
    out.append("</tbody></table>")
    if table.footer:
        out.append(f'<p class="answer">{html.escape(table.footer)}</p>')
    return "\n".join(out)


def html_page(report: Report) -> str:
    title = html.escape(report.title)
    body = [f"<h1>{title}</h1>",
            "<p class=\"note\">Jobs: " + ", ".join(f"<code>{html.escape(s)}</code>"
                                                   for s in report.sources) + "</p>"]
    body += [f'<p class="answer">{html.escape(a)}</p>' for a in report.answers]
    if report.warnings:
        body.append("<ul>" + "".join(f'<li class="warning">{html.escape(w)}</li>'
                                     for w in report.warnings) + "</ul>")
    body += [_html_table(t) for t in report.tables]
    if report.plots:
        body.append("<h2>Plots</h2>")
        for plot in report.plots:
            src = html.escape(plot.filename, quote=True)
            body.append(f'<figure><img src="{src}" alt="{html.escape(plot.title, quote=True)}">'
                        f"<figcaption><b>{html.escape(plot.title)}.</b> "
                        f"{html.escape(plot.caption)}</figcaption></figure>")
    if report.points_table is not None:
        body.append(f"<details><summary>{html.escape(report.points_table.title)} "
                    f"({len(report.points_table.rows)})</summary>")
        body.append(_html_table(report.points_table).split("\n", 1)[1])
        body.append("</details>")
    body.append('<p class="note">Raw figures of every run: <a href="points.csv">points.csv</a>, '
                '<a href="points.json">points.json</a>.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_all(report: Report, points: Sequence[collect.Point], outdir: Path) -> dict[str, Path]:
    """The four text files (the PNGs are already there)."""
    files = {
        "markdown": outdir / SUMMARY_MD,
        "html": outdir / SUMMARY_HTML,
    }
    files["markdown"].write_text(markdown(report), encoding="utf-8")
    files["html"].write_text(html_page(report), encoding="utf-8")
    files["csv"] = write_points_csv(points, outdir / POINTS_CSV)
    files["json"] = write_points_json(points, report.sources, outdir / POINTS_JSON)
    return files
