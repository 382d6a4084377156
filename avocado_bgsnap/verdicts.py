"""The three verdict classes, in one place (docs/verdicts.md).

* FAIL: QEMU or the kernel did something wrong.  Library code that has the
  evidence raises a :class:`Defect`; :func:`judged` turns it into
  ``test.fail``.  A CI pipeline reads FAIL as "QEMU/kernel regression".
* ERROR: the environment or the harness (the target filled up, a tool is
  missing, a timeout of ours, bad input).  Any other exception: avocado
  already makes it an ERROR with the exception's text.
* CANCEL: predicted unsupported on this host or build, with the reason
  (``preflight.HostUnsupported``, a predicted refusal).

A test module runs its steps inside ``with judged(test):``.
"""

import contextlib


class Defect(Exception):
    """QEMU or the kernel did something wrong; the message is the evidence."""


class ImageNotRestorable(Defect):
    """An image QEMU wrote (and reported as completed) does not restore, or
    its restore hangs past the suite's bound."""


class GuestWedged(Defect):
    """A guest stopped answering: the source after a failed or cancelled
    save, or a restored guest that never comes back."""


@contextlib.contextmanager
def judged(test):
    """Run a test's steps; a :class:`Defect` becomes the test's FAIL."""
    try:
        yield
    except Defect as exc:
        test.fail(f"{type(exc).__name__}: {exc}")
