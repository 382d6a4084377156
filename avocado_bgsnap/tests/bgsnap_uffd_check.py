"""UFFD-WP self-check of the host kernel, no VM (docs/uffd-check.md).

1. Build (or reuse) ``bgsnap-uffd-check`` and run it, with
   ``bgsnap_uffd_hugepages`` 2 MiB hugepages reserved around the run when
   root (``nr_hugepages`` put back after); ``bgsnap_uffd_negative = yes``
   runs the negative control (registered, never write-protected).
2. Store the table (``uffd-check.txt``) and the results
   (``uffd-check.json``) in the output dir; the JSON also on the whiteboard.
3. Verdict: a FAILed case fails the test, naming it; nothing supported
   cancels.  The negative control passes only when every case it could
   run FAILed.
"""

import json
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import uffdcheck, vt_compat
from avocado_bgsnap.host.memory import HostMemoryError


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    options = uffdcheck.CheckOptions(
        negative=params.get_boolean("bgsnap_uffd_negative", False),
        hugepages=int(params.get_numeric("bgsnap_uffd_hugepages", uffdcheck.HUGEPAGES)),
        mib=int(params.get_numeric("bgsnap_uffd_mib", 16)),
        case_timeout_s=params.get_numeric("bgsnap_uffd_case_timeout", 30, float))
    error_context.context("Run bgsnap-uffd-check%s" % (" (negative control: no "
                          "write-protection)" if options.negative else ""), test.log.info)
    try:
        report = uffdcheck.run_check(options, log=test.log.info)
    except (uffdcheck.UffdCheckError, HostMemoryError) as exc:
        test.error(str(exc))
    out = Path(test.outputdir)
    table = uffdcheck.render_table(report)
    (out / "uffd-check.txt").write_text(table + "\n")
    uffdcheck.write_json(report, out / "uffd-check.json")
    test.whiteboard = json.dumps(report.to_dict(), sort_keys=True)
    test.log.info("UFFD-WP self-check (%s):\n%s", out / "uffd-check.json", table)
    result = (uffdcheck.negative_verdict if options.negative else uffdcheck.verdict)(report)
    if result.status == "CANCEL":
        test.cancel(result.message)
    if result.status == "FAIL":
        test.fail(result.message)
    test.log.info("%s", result.message)
