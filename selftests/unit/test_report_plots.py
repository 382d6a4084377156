"""report.plots: every plot is a valid PNG drawn by the Agg canvas; no pyplot, no display."""

import subprocess
import sys

from matplotlib.backends.backend_agg import FigureCanvasAgg
from test_report_synthetic import make_job, scale_tests, synthetic_matrix

from avocado_bgsnap.report import collect, compare, plots
from avocado_bgsnap.report.figures import PAUSE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_every_plot_is_a_png_printed_by_agg(tmp_path, monkeypatch):
    printed = []
    original = FigureCanvasAgg.print_png

    def spy(canvas, *args, **kwargs):
        printed.append(type(canvas))
        return original(canvas, *args, **kwargs)

    monkeypatch.setattr(FigureCanvasAgg, "print_png", spy)
    points = collect.load_points([synthetic_matrix(tmp_path)])
    series = collect.group_series(points)
    comparisons = compare.compare_builds(points)
    outdir = tmp_path / "out"
    outdir.mkdir()
    made = plots.plot_all(series, comparisons, outdir)
    assert [p.filename for p in made] == [
        "pause_vs_ram.png", "total_vs_ram.png", "throughput.png", "downtime_vs_pause.png",
        "time_split.png", "ab1_pause.png", "ab1_stall.png"]
    assert printed == [FigureCanvasAgg] * len(made)
    for plot in made:
        width, height = _png_size(outdir / plot.filename)
        assert width >= 600 and height >= 250, plot.filename
        assert plot.title and plot.caption


def test_figures_live_on_an_agg_canvas():
    assert isinstance(plots.new_figure(2, 2).canvas, FigureCanvasAgg)


def test_no_pyplot_and_no_display_needed(tmp_path):
    make_job(tmp_path, "job-1", scale_tests(reps=1, sizes=(256,)))
    code = ("import sys, matplotlib\n"
            "from avocado_bgsnap.report import build\n"
            f"build.make_report([{str(tmp_path)!r}])\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
            "print(matplotlib.get_backend())\n")
    env = {"PATH": "/usr/bin:/bin", "MPLBACKEND": "", "HOME": str(tmp_path)}  # no DISPLAY
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bgsnap-report" / "time_split.png").read_bytes()[:8] == PNG_SIGNATURE


def test_lines_against_guest_ram_need_two_sizes(tmp_path):
    points = collect.load_points([make_job(tmp_path, "job-1", scale_tests(reps=2, sizes=(256,)))])
    made = {p.filename for p in plots.plot_all(collect.group_series(points), [], tmp_path)}
    assert made == {"throughput.png", "time_split.png"}
    points = collect.load_points([make_job(tmp_path, "job-2", scale_tests(reps=1,
                                                                         sizes=(256, 1024)))])
    made = {p.filename for p in plots.plot_all(collect.group_series(points), [], tmp_path)}
    assert {"pause_vs_ram.png", "total_vs_ram.png", "downtime_vs_pause.png"} <= made


def test_plots_without_data_are_skipped(tmp_path):
    assert plots.plot_all([], [], tmp_path) == []
    empty = compare.ABComparison("A", "B")
    assert plots.plot_ab(empty, PAUSE, tmp_path / "x.png") is None
    assert list(tmp_path.iterdir()) == []
