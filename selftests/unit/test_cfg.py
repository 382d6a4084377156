"""The shipped Cartesian configs parse and name the tests as documented."""

from virttest import cartesian_config

from avocado_bgsnap import paths


def dicts(only=None):
    parser = cartesian_config.Parser()
    parser.parse_file(str(paths.cfg_dir() / "base.cfg"))
    parser.parse_file(str(paths.cfg_dir() / "subtests.cfg"))
    if only:
        parser.only_filter(only)
    return list(parser.get_dicts())


def test_test_names_and_types():
    names = {d["shortname"]: d for d in dicts()}
    assert {"bgsnap.basic.small", "bgsnap.basic.1g", "bgsnap.damaged_snapshot.small"} <= set(names)
    assert all(d["type"].startswith("bgsnap_") for d in names.values())
    assert (paths.PACKAGE_DIR / "tests" / "bgsnap_basic.py").is_file()


def test_negative_control_expects_damage():
    (d,) = dicts("damaged_snapshot.small")
    assert d["bgsnap_damage_snapshot"] == "yes" and d["bgsnap_expect"] == "damage-caught"


def test_sizes():
    (d,) = dicts("basic.1g")
    assert (d["mem"], d["bgsnap_workload_mib"]) == ("1024", "768")
    assert d["start_vm"] == "no"  # the test boots after choosing the accelerator
