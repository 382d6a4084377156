"""The probe-stall wrapper: '-e ' dropped for stdio probes only, argv intact."""

import subprocess

from avocado_bgsnap import vt_compat


def fake_qemu(tmp_path):
    script = tmp_path / "fake-qemu"
    script.write_text('#!/bin/bash\necho "ARGS:$*"\necho "ENV:${BGSNAP_X:-}"\n'
                      'case " $* " in *" stdio "*) cat ;; esac\n')
    script.chmod(0o755)
    return script


def run(wrapper, args, stdin):
    return subprocess.run([str(wrapper)] + args, input=stdin, capture_output=True,
                          text=True, timeout=10, check=True).stdout


def test_dash_echo_prefix_is_removed_for_monitor_stdio(tmp_path):
    wrapper = vt_compat.write_qemu_wrapper(tmp_path / "w", str(fake_qemu(tmp_path)))
    out = run(wrapper, ["-monitor", "stdio", "-S"], "-e help\nquit\n")
    assert "ARGS:-monitor stdio -S" in out
    assert "\nhelp\nquit\n" in out and "-e help" not in out


def test_qemu_runs_once_for_a_probe(tmp_path):
    wrapper = vt_compat.write_qemu_wrapper(tmp_path / "w", str(fake_qemu(tmp_path)))
    out = run(wrapper, ["-qmp", "stdio"], "-e {}\n")
    assert out.count("ARGS:") == 1


def test_real_binary_behind_the_wrapper(tmp_path):
    real = fake_qemu(tmp_path)
    wrapper = vt_compat.write_qemu_wrapper(tmp_path / "w w", str(real))
    assert vt_compat.real_qemu_binary(str(wrapper)) == str(real)
    assert vt_compat.real_qemu_binary(str(real)) == str(real)
    assert vt_compat.real_qemu_binary("/nonexistent") == "/nonexistent"


def test_other_invocations_are_untouched(tmp_path):
    wrapper = vt_compat.write_qemu_wrapper(tmp_path / "w", str(fake_qemu(tmp_path)),
                                           extra_args=("-L", "/x y"), extra_env={"BGSNAP_X": "1"})
    out = run(wrapper, ["-name", "vm1", "-e"], "")
    assert "ARGS:-L /x y -name vm1 -e" in out and "ENV:1" in out


def test_placeholder_link_satisfies_bootstrap_check(tmp_path):
    link = vt_compat.ensure_provider_download_placeholder(tmp_path / "p", tmp_path)
    assert list((tmp_path / "p" / "downloads").iterdir()) == [link]
    assert vt_compat.ensure_provider_download_placeholder(tmp_path / "p", tmp_path) == link
