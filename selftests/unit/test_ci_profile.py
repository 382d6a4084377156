"""The CI profile (cfg/ci.cfg, docs/ci.md): the families' own tests, nothing else."""

import re

import pytest

from avocado_bgsnap import paths

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
