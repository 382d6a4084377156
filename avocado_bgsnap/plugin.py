"""The avocado plugins of the suite (entry points in setup.py).

* ``bgsnap-settings`` (avocado.plugins.settings): plugin_settings.py.
* ``bgsnap`` (avocado.plugins.init): registers the ``[bgsnap]`` settings.
* ``bgsnap`` (avocado.plugins.cli.cmd): the ``avocado bgsnap`` command.

Plugins only bind settings and dispatch; the work is in commands.py.
"""

from avocado.core.plugin_interfaces import CLICmd, Init, JobPre
from avocado.core.settings import settings

SECTION = "bgsnap"
OPTIONS = (
    # key, type, default, help, long option
    ("qemu_binary", str, None, "QEMU binary to check and use (default: qemu-system-x86_64 "
     "on PATH)", "--qemu-binary"),
    ("accel", str, "auto", "Accelerator: auto (KVM if a short boot probe reaches the guest "
     "shell, else TCG), kvm or tcg", "--accel"),
    ("kvm_probe_timeout", float, 20.0, "Seconds the KVM boot probe may take",
     "--kvm-probe-timeout"),
    ("kernel", str, None, "Use this kernel (bzImage) for the embedded guest instead of "
     "Debian's cloud kernel", "--kernel"),
    ("json", bool, False, "Print host-check facts as JSON", "--json"),
    ("job", str, None, "A job results directory (default: the latest job)", "--job"),
    ("report_jobs", list, None, "A job dir, or a results dir of job-* dirs, to report on "
     "(repeatable; default: the latest job)", "--job"),
    ("report_compare", list, None, "Baseline (A) job dir(s) to compare the --job runs (B) "
     "against (repeatable)", "--compare"),
    ("report_output", str, None, "Report folder (default: <first --job>/bgsnap-report)",
     "--output"),
    ("report_by", str, None, "Compare sides of a fleet: host, kernel, qemu, cpu or accel "
     "(default: host when the jobs come from more than one host)", "--by"),
    ("report_sides", list, None, "With --by: side A, then side B (repeatable; default: the "
     "first side against every other)", "--side"),
    ("qemu_backports", bool, False, "Debian 12: fetch QEMU from bookworm-backports and unpack "
     "it into BGSNAP_HOME/qemu (nothing is installed)", "--backports"),
    ("qemu_dir", str, None, "A QEMU build folder: unpacked Debian packages (usr/bin/...), an "
     "install prefix (bin/...) or a build tree (qemu-system-x86_64 + pc-bios/)", "--dir"),
    ("distro", str, None, "Build a Debian guest instead: bookworm (Debian 12) or trixie "
     "(Debian 13), debootstrapped offline into a qcow2 (docs/guests.md)", "--distro"),
    ("qemu_name", str, None, "Name of the build in test names (default: qemuMAJOR_MINOR_MICRO)",
     "--name"),
    ("uffd_json", str, None, "Also write the self-check's results as JSON to FILE", "--json"),
    ("kernel_refs", list, None, "Test references to run instead of the kernel set "
     "(repeatable; default: uffd memory.backend hostmm)", "--tests"),
    # a long option without a leading '-' is a positional argument
    ("qemu_build", str, None, "Name of the build (see 'avocado bgsnap qemu-list')", "NAME"),
    ("repro_job", str, None, "A job results directory (default: the latest job)", "JOB?"),
    ("repro_test", str, None, "The test (name or part of it; default: the job's first "
     "failed test)", "TEST?"),
    ("rates_reps", str, "5", "Runs per side to measure at, comma-separated (e.g. 5,8,10)",
     "--reps"),
    ("rates_rows", int, None, "Comparisons in one simulated report (default: one per pool; "
     "'avocado run ab' makes 16)", "--rows"),
    ("rates_trials", int, None, "Simulated reports per figure (default 400)", "--trials"),
    ("rates_min_effect", str, None, "Effect floors to measure at, comma-separated fractions "
     "(default: the report's, 0.2)", "--min-effect"),
    ("baseline_test", str, None, "The test to compare with raw QEMU (default "
     "bgsnap.basic.1g)", "TEST?"),
    ("baseline_runs", int, None, "Runs of each side, suite and raw interleaved (default 3)",
     "--runs"),
    ("confirm_runs", int, None, "Runs per side of each flagged point (default 5, at least 4)",
     "--runs"),
    ("repro_output", str, None, "Folder for the script and its files (default: "
     "<job>/bgsnap-repro/<test>)", "--output"),
)
SUBCOMMANDS = {
    "host-check": ("Check QEMU, userfaultfd write-protect and the accelerator",
                   ("qemu_binary", "accel", "kvm_probe_timeout", "json")),
    "build-guest": ("Build (or reuse) the embedded guest: kernel + busybox initramfs; with "
                    "--distro a Debian guest (docs/guests.md)", ("kernel", "distro")),
    "setup": ("Build the guest and configure Avocado-VT offline for the suite",
              ("qemu_binary", "kernel")),
    "summary": ("Print each test's figures of a job (default: the latest job)",
                ("job",)),
    "report": ("Tables and plots of the true pause per mode, RAM, QEMU build and host; A/B "
               "verdict with --compare, or between hosts/kernels with --by (docs/fleet.md)",
               ("report_jobs", "report_compare", "report_output", "report_by",
                "report_sides")),
    "qemu-add": ("Add a side-by-side QEMU build (--backports or --dir PATH): its tests are "
                 "named <build>.bgsnap...", ("qemu_backports", "qemu_dir", "qemu_name")),
    "qemu-list": ("List the QEMU builds the suite tests", ()),
    "qemu-remove": ("Remove a side-by-side QEMU build", ("qemu_build",)),
    "uffd-check": ("Check the kernel's userfaultfd write-protect without a guest: QEMU's "
                   "flow on each memory type, fork, pageout, THP split, mremap "
                   "(docs/uffd-check.md)", ("uffd_json",)),
    "validate-kernel": ("Run the kernel set (the self-check, the memory backends, the host's "
                        "memory management during the save) and print one verdict table "
                        "per kernel", ("kernel_refs",)),
    "ab-error-rates": ("The A/B verdict's false-flag rate and power at N runs per side, "
                       "resampled from the real runs of the given jobs (docs/benchmarks.md)",
                       ("report_jobs", "rates_reps", "rates_rows", "rates_trials",
                        "rates_min_effect")),
    "ab-confirm": ("Re-run a job's A/B flags between QEMU builds, A and B interleaved, and "
                   "report confirmed flags apart (docs/benchmarks.md)",
                   ("job", "confirm_runs")),
    "baseline": ("Run a test and the same cycle with plain QEMU and QMP, no avocado(-vt); "
                 "print suite / raw per phase (docs/benchmarks.md)",
                 ("baseline_test", "baseline_runs")),
    "repro": ("Write a standalone reproducer (QEMU + Python 3 + bgsnap-wl) of a failed "
              "test (docs/repro.md)", ("repro_job", "repro_test", "repro_output")),
}


def _add_argument(sub, key, key_type, help_msg, long_arg):
    """One option of a sub-command, bound to ``bgsnap.<key>``.

    avocado binds one parser per registered option, but several sub-commands
    share these: plain arguments whose dest is the option's namespace are
    merged into the settings by avocado (Settings.merge_with_arguments) when
    given.  A ``long_arg`` without a leading '-' is a positional argument.
    """
    kind = {"action": "store_true"} if key_type is bool else {"type": key_type}
    if key_type is list:  # repeatable option: --job A --job B -> ["A", "B"]
        kind = {"action": "append"}
    if long_arg.startswith("-") and key_type is not bool:
        kind["metavar"] = long_arg.lstrip("-").upper().replace("-", "_")
    if long_arg.startswith("-"):
        sub.add_argument(long_arg, dest=f"{SECTION}.{key}", default=None, help=help_msg, **kind)
    elif long_arg.endswith("?"):  # an optional positional argument
        sub.add_argument(f"{SECTION}.{key}", metavar=long_arg[:-1], nargs="?", default=None,
                         help=help_msg, **kind)
    else:
        sub.add_argument(f"{SECTION}.{key}", metavar=long_arg, help=help_msg, **kind)


class BgsnapInit(Init):
    name = "bgsnap"
    description = "avocado-bgsnap settings"

    def initialize(self):
        for key, key_type, default, help_msg, _ in OPTIONS:
            settings.register_option(SECTION, key=key, key_type=key_type,
                                     default=default, help_msg=help_msg)


class BgsnapRunner(JobPre):
    name = "bgsnap-runner"
    description = "avocado-bgsnap: avocado-vt's runner known without starting it (vt_compat 13)"

    def pre(self, job):  # pylint: disable=W0613 - the registry is per process
        from . import vt_compat

        vt_compat.known_vt_runner()


class Bgsnap(CLICmd):
    name = "bgsnap"
    description = "QEMU background-snapshot suite: host check, guest build, setup, QEMU builds"

    def configure(self, parser):
        parser = super().configure(parser)
        subcommands = parser.add_subparsers(dest="bgsnap_subcommand", metavar="sub-command")
        options = {key: (key_type, help_msg, long_arg)
                   for key, key_type, _, help_msg, long_arg in OPTIONS}
        for name, (help_msg, keys) in SUBCOMMANDS.items():
            sub = subcommands.add_parser(name, help=help_msg)
            for key in keys:
                _add_argument(sub, key, *options[key])

    def run(self, config):
        from . import commands  # heavy imports only when the command runs

        return commands.dispatch(config.get("bgsnap_subcommand"), config)
