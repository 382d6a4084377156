"""avocado-bgsnap: Avocado-VT plugin and test provider for QEMU background snapshots."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

VERSION = (Path(__file__).parent / "VERSION").read_text().strip()

setup(
    name="avocado-bgsnap",
    version=VERSION,
    description="Avocado-VT tests for QEMU background snapshots: correctness and true pause time",
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="GPLv2+",
    python_requires=">=3.11",
    packages=find_namespace_packages(include=["avocado_bgsnap", "avocado_bgsnap.*"]),
    package_data={"avocado_bgsnap": ["guest/init.sh", "guest/wl/*.c", "guest/wl/*.h",
                                     "guest/uffdcheck/*.c", "guest/uffdcheck/*.h"]},
    include_package_data=True,
    install_requires=[
        "avocado-framework==113.0",
        "avocado-framework-plugin-vt==113.0",
        "aexpect",
        # virttest warns without it at every start; screendumps need it
        "pillow",
        # avocado 113 imports pkg_resources, gone in setuptools 82
        "setuptools<81",
        # avocado bgsnap report: PNG plots (Agg canvas, no display) and the
        # Mann-Whitney U test of the A/B verdict (docs/report.md)
        "matplotlib",
        "scipy",
        # avocado's HTML job page (results.html); the report plugin links
        # its own report from it (docs/report.md)
        "avocado-framework-plugin-result-html==113.0",
        # avocado bgsnap baseline: the raw-QEMU side speaks QMP with QEMU's
        # own Python client, not a hand-written one (docs/dependencies.md)
        "qemu-qmp",  # (so spelt: pkg_resources cannot find "qemu.qmp")
    ],
    extras_require={
        "test": ["pytest"],
        # the CI profile's tmt plan reads avocado's tmt results (the
        # 'tmt' result plugin's format needs tmt 1.29+; docs/ci.md)
        "ci": ["tmt>=1.29"],
        # one avocado run over N hosts: avocado's own remote spawner, not
        # ours (docs/fleet.md); same release as avocado
        "fleet": ["avocado-framework-plugin-spawner-remote==113.0"],
    },
    entry_points={
        "avocado.plugins.settings": ["bgsnap-settings = avocado_bgsnap.plugin_settings:BgsnapSettings"],
        "avocado.plugins.init": ["bgsnap = avocado_bgsnap.plugin:BgsnapInit"],
        "avocado.plugins.cli.cmd": ["bgsnap = avocado_bgsnap.plugin:Bgsnap"],
        "avocado.plugins.result_events": [
            "bgsnap-progress = avocado_bgsnap.progress:BgsnapProgress"],
        "avocado.plugins.result": [
            "bgsnap-report = avocado_bgsnap.report.result_plugin:BgsnapReportResult"],
        "avocado.plugins.job.prepost": [
            "bgsnap-leftovers = avocado_bgsnap.leftovers:BgsnapLeftovers",
            "bgsnap-runner = avocado_bgsnap.plugin:BgsnapRunner"],
    },
)
