"""The CI profile (cfg/ci.cfg, docs/ci.md): the families' own tests, nothing else;
its GitLab job (.gitlab-ci.yml) as docs/ci.md quotes it, run under gitlab-ci-local."""

import os
import re
import shutil
import subprocess

import pytest

from avocado_bgsnap import paths
from avocado_bgsnap.report import ci_status

from test_cfg import dicts

# ci.<group>.X is this family's test (same params but the names)
FAMILY = {"cycle": "bgsnap.{}.small", "ram": "memory.{}", "failure": "fault.{}",
          "guest": "state.{}"}
NAME_KEYS = {"name", "shortname", "_name_map_file", "_short_name_map_file", "dep"}


def _by_name(only=None):
    return {d["shortname"]: d for d in dicts(only)}


def test_each_ci_test_is_a_family_test_with_the_same_params():
    everything = _by_name()
    ci = {n: d for n, d in everything.items() if n.startswith("ci.")}
    assert len(ci) >= 10
    for name, d in ci.items():
        group, rest = name.split(".", 2)[1:]
        twin = everything[FAMILY[group].format(rest)]
        same = {k: v for k, v in d.items() if k not in NAME_KEYS}
        assert same == {k: v for k, v in twin.items() if k not in NAME_KEYS}, name


@pytest.mark.parametrize("reference", [
    "bgsnap", "bgsnap.basic.small", "negative..small", "memory", "memory.backend",
    "fault", "fault.capability", "fault.bad_image", "state", "hostmm", "scale", "ab",
    "bench", "uffd"])
def test_documented_references_do_not_pick_ci_tests(reference):
    assert not [n for n in _by_name(reference) if n.startswith("ci.")]


def test_no_host_setting_changes():
    for name, d in _by_name("ci").items():
        assert "bgsnap_host_thp" not in d, name
        assert not any("hugetlb" in str(v) for v in d.values()), name
        assert d.get("type") != "bgsnap_uffd_check", name


def test_the_table_of_docs_ci_lists_every_ci_test():
    doc = (paths.PROJECT_DIR / "docs" / "ci.md").read_text()
    listed = set()
    for row in re.findall(r"^\| `(ci\.[^|]*)\|", doc, re.M):
        first, *more = [c.strip(" `") for c in row.split("/")]
        listed.add(first)
        base = first.rsplit(".", 1)[0]
        listed.update(f"{base}.{m}" for m in more)
    assert listed == set(_by_name("ci"))


# --- the GitLab job: .gitlab-ci.yml, quoted in docs/ci.md ("GitLab CI") ---

GITLAB_CI = paths.PROJECT_DIR / ".gitlab-ci.yml"
GITLAB_JOB = "bgsnap-ci"


def _gitlab_snippet(doc):
    section = doc.split("\n## GitLab CI", 1)[1].split("\n## ", 1)[0]
    return re.search(r"^```yaml\n(.*?)^```$", section, re.M | re.S).group(1)


def gitlab_job_problems(text):
    """What keeps TEXT from being the CI profile's GitLab job ([] if nothing)."""
    from ruamel.yaml import YAML, YAMLError   # tmt's, the 'ci' extra

    try:
        job = (YAML(typ="safe").load(text) or {}).get(GITLAB_JOB)
    except YAMLError as exc:
        return [f"not YAML: {exc}"]
    if not isinstance(job, dict):
        return [f"no job {GITLAB_JOB}"]
    problems = []
    script = job.get("script") or []
    command = script[0].split() if len(script) == 1 else []
    if command[:1] != ["scripts/ci-profile.sh"] or len(command) != 2:
        return [f"script is not one 'scripts/ci-profile.sh OUTPUT_DIR': {script!r}"]
    out = command[1].strip("\"'")
    if "$" in out or out.startswith("/"):
        # gitlab-ci-local sets CI_PROJECT_DIR to /builds/... for a job with
        # an image, even with --force-shell-executor
        problems.append(f"output dir {out!r} is not relative to the checkout")
    artifacts = job.get("artifacts") or {}
    junit = (artifacts.get("reports") or {}).get("junit")
    if junit != f"{out}/junit.xml":
        problems.append(f"artifacts.reports.junit is {junit!r}, not {out}/junit.xml")
    wanted = {f"{out}/{name}" for name in ("junit.xml", "results.yaml", "results.json")}
    if not wanted <= set(artifacts.get("paths") or []):
        problems.append(f"artifacts.paths lack {sorted(wanted - set(artifacts.get('paths') or []))}")
    if artifacts.get("when") != "always":
        problems.append("artifacts.when is not 'always': a FAIL's junit.xml would be lost")
    if job.get("allow_failure") != {"exit_codes": [ci_status.INFRA]}:
        problems.append(f"allow_failure is {job.get('allow_failure')!r}, "
                        f"not exit_codes [{ci_status.INFRA}] (ci_status.INFRA)")
    if not job.get("timeout"):
        problems.append("no timeout")
    return problems


def test_docs_quote_the_shipped_gitlab_ci_file():
    doc = (paths.PROJECT_DIR / "docs" / "ci.md").read_text()
    assert _gitlab_snippet(doc) == GITLAB_CI.read_text()


def test_docs_snippet_comparison_catches_a_changed_line():
    doc = (paths.PROJECT_DIR / "docs" / "ci.md").read_text()
    changed = doc.replace("exit_codes: [2]", "exit_codes: [1]", 1)
    assert changed != doc
    assert _gitlab_snippet(changed) != GITLAB_CI.read_text()


def test_the_shipped_gitlab_job_runs_the_ci_profile():
    assert gitlab_job_problems(GITLAB_CI.read_text()) == []


@pytest.mark.parametrize("old, new, problem", [
    ("exit_codes: [2]", "exit_codes: [1]", "allow_failure"),
    ("      junit: ci-results/junit.xml\n", "", "artifacts.reports.junit"),
    ("junit: ci-results/junit.xml", "junit: junit.xml", "artifacts.reports.junit"),
    ("ci-results/results.yaml, ", "", "artifacts.paths"),
    ("when: always", "when: on_success", "artifacts.when"),
    ("scripts/ci-profile.sh ci-results", "scripts/run-tests.sh", "script"),
    ("scripts/ci-profile.sh ci-results", 'scripts/ci-profile.sh "$CI_PROJECT_DIR/ci-results"',
     "relative"),
    ("timeout: 30 minutes", "", "timeout"),
    ("bgsnap-ci:", "other:", "no job"),
    ("  script:", "script:", "not YAML"),
])
def test_gitlab_job_check_catches(old, new, problem):
    text = GITLAB_CI.read_text()
    assert old in text
    problems = gitlab_job_problems(text.replace(old, new, 1))
    assert any(problem in p for p in problems), problems


GCL_PREFIX = paths.bgsnap_home() / "tools" / "gitlab-ci-local"


@pytest.mark.skipif(not (GCL_PREFIX / "node_modules" / ".bin" / "gitlab-ci-local").exists()
                    or not shutil.which("rsync") or not shutil.which("git"),
                    reason="gitlab-ci-local not installed (scripts/gitlab-ci-local.sh installs it)")
@pytest.mark.parametrize("job_exit, status, summary", [
    (0, 0, " PASS "), (1, 1, " FAIL "), (2, 2, " WARN "), (3, 1, " FAIL ")])
def test_gitlab_ci_local_runs_the_shipped_job_and_maps_its_exit(tmp_path, job_exit, status,
                                                                summary):
    """The shipped job under gitlab-ci-local with a stub ci-profile.sh: 1 is
    red although gitlab-ci-local itself exits 0 for it, 2 a warning, and the
    junit.xml is an artifact whatever the exit."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(GITLAB_CI, tmp_path)
    for name in ("lib.sh", "gitlab-ci-local.sh"):
        shutil.copy(paths.PROJECT_DIR / "scripts" / name, tmp_path / "scripts")
    stub = tmp_path / "scripts" / "ci-profile.sh"
    stub.write_text('#!/bin/bash\nmkdir -p "$1" && echo "<testsuite/>" > "$1/junit.xml"\n'
                    f"exit {job_exit}\n")
    stub.chmod(0o755)
    (tmp_path / ".bgsnap" / "tools").mkdir(parents=True)
    (tmp_path / ".bgsnap" / "tools" / "gitlab-ci-local").symlink_to(GCL_PREFIX)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "stub"], cwd=tmp_path, check=True)
    env = dict(os.environ, BGSNAP_HOME=str(tmp_path / ".bgsnap"))
    run = subprocess.run([str(tmp_path / "scripts" / "gitlab-ci-local.sh")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == status, run.stdout + run.stderr
    assert re.search(rf"^{summary}.* {GITLAB_JOB}", run.stdout, re.M), run.stdout
    artifact = tmp_path / ".bgsnap" / "gitlab-ci-local" / "artifacts" / GITLAB_JOB / "ci-results"
    assert (artifact / "junit.xml").read_text() == "<testsuite/>\n"
    assert not (tmp_path / "ci-results").exists()   # the checkout is left as it was
