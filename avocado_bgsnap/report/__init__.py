"""The report of bgsnap jobs: how long the guest is really paused, and A/B verdicts.

``avocado bgsnap report`` (commands.py) and the ``bgsnap-report`` result
plugin (result_plugin.py) both call :func:`build.make_report`.  Modules:

* ``collect``: records -> typed ``Point`` -> ``Series`` per (build, mode, RAM)
* ``stats``: medians, percentiles, the A/B verdict (pure)
* ``figures``: names, labels and units of the figures shown
* ``compare``: A/B between job dirs or between QEMU builds of one job
* ``memconfig``: the memory family's outcome per memory configuration x build
* ``plots``: PNGs (matplotlib, Agg canvas)
* ``tables`` / ``render``: summary.md, summary.html, points.csv, points.json

Importing this package imports neither matplotlib nor scipy.
"""
