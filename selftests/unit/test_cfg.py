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
    assert {"bgsnap.basic.small", "bgsnap.basic.1g", "bgsnap.pattern.mixed.small",
            "bgsnap.transport.zstd.small", "bgsnap.negative.damaged_file.small",
            "bgsnap.negative.late_image.small"} <= set(names)
    assert all(d["type"].startswith("bgsnap_") for d in names.values())
    assert (paths.PACKAGE_DIR / "tests" / "bgsnap_basic.py").is_file()


def test_negative_controls_and_transports_parse_into_settings():
    from virttest.utils_params import Params

    from avocado_bgsnap import settings

    for d in dicts():
        cfg = settings.from_params(Params(d))  # every variant is a valid config
        if ".negative." in d["shortname"]:
            assert cfg.negative_control != "none"
        else:
            assert cfg.negative_control == "none"
    d = {x["shortname"]: x for x in dicts()}["bgsnap.negative.damaged_in_transit.small"]
    assert settings.from_params(Params(d)).transport.name == "damaged_in_transit"


def test_every_shortname_selects_exactly_its_test():
    # a hidden ('@') default variant would make 'avocado run <shortname>' match nothing
    for name in [d["shortname"] for d in dicts()]:
        assert [d["shortname"] for d in dicts(name)] == [name]


def test_sizes():
    d = {x["shortname"]: x for x in dicts()}["bgsnap.basic.1g"]
    assert (d["mem"], d["bgsnap_workload_mib"]) == ("1024", "768")
    assert d["start_vm"] == "no"  # the test boots after choosing the accelerator


def test_scale_matrix_is_sizes_by_modes_by_repetitions():
    from virttest.utils_params import Params

    from avocado_bgsnap import settings

    points = [settings.from_params(Params(d)) for d in dicts("scale")]
    assert len(points) == 5 * 4 * 3
    assert {p.mode for p in points} == set(settings.MODES)
    assert {p.guest_mem_mib for p in points} == {256, 512, 1024, 2048, 4096}
    assert all(p.workload.mib * 2 == p.guest_mem_mib for p in points)


def test_ab_set_is_eight_repetitions_of_the_small_points():
    from virttest.utils_params import Params

    from avocado_bgsnap import settings

    points = [settings.from_params(Params(d)) for d in dicts("ab")]
    assert len(points) == 2 * 3 * 8  # 8: a lone row can pass the report-wide control
    assert {p.guest_mem_mib for p in points} == {256, 1024}
    assert {p.mode for p in points} == {"background", "stop_save", "snapshot_save"}
    assert {p.repetition for p in points} == set(range(1, 9))
