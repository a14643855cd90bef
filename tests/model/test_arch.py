from __future__ import annotations

import json

import pytest
import yaml

from shufflesearch import PRESETS, Arch, ArchError, Stage, Stem, load_arch, preset
from shufflesearch.model.specs import unit_specs


def test_preset_names_cover_the_papers():
    for w in ("0_5", "1_0", "1_5", "2_0"):
        assert f"shufflenet_v2_x{w}" in PRESETS
        for g in (1, 2, 3, 4, 8):
            assert f"shufflenet_v1_g{g}_x{w}" in PRESETS


def test_v2_preset_widths_match_the_paper_table():
    # V2 paper Table 5 / REFERENCE.md
    a = preset("shufflenet_v2_x1_0")
    assert [s.channels for s in a.stages] == [116, 232, 464]
    assert [s.depth for s in a.stages] == [4, 8, 4]
    assert a.head == 1024 and a.stem.channels == 24
    assert preset("shufflenet_v2_x2_0").head == 2048


def test_v1_preset_widths_match_the_paper_table():
    # V1 paper Table 1 at 1x
    for g, c in {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}.items():
        a = preset(f"shufflenet_v1_g{g}_x1_0")
        assert [s.channels for s in a.stages] == [c, 2 * c, 4 * c]
        assert a.head == 0


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "shufflenet_v1_g3_x0_5", "shufflenet_v2_megvii_x1_5"])
def test_round_trip_yaml_and_json(name, tmp_path):
    a = preset(name)
    assert Arch.from_yaml(a.to_yaml()) == a
    assert Arch.from_dict(json.loads(a.to_json())) == a
    p = tmp_path / "a.yaml"
    p.write_text(a.to_yaml())
    assert load_arch(p).archid == a.archid
    p = tmp_path / "a.json"
    p.write_text(a.to_json())
    assert load_arch(p) == a


def test_archid_ignores_key_order_and_uniform_kernel_lists():
    a = preset("shufflenet_v2_x0_5")
    d = a.to_dict()
    shuffled = dict(reversed(list(d.items())))
    assert Arch.from_dict(shuffled).archid == a.archid
    d["stages"][0]["kernel"] = [3, 3, 3, 3]
    assert Arch.from_dict(d).archid == a.archid
    d["stages"][0]["kernel"] = [3, 5, 3, 3]
    assert Arch.from_dict(d).archid != a.archid


def test_archid_is_stable_across_processes():
    # A fixed hash of a fixed canonical form: if this changes, every stored run's ids change.
    a = Arch(stages=(Stage("v2", 48, 2),), num_classes=10)
    blob = json.dumps(a.to_dict(), sort_keys=True, separators=(",", ":"))
    import hashlib

    assert a.archid == hashlib.sha256(blob.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    "stage, field, rule",
    [
        (dict(family="v1", channels=240, depth=2, groups=3), None, None),
        (dict(family="v1", channels=116, depth=2, groups=3), "stages[1].groups", "does not divide"),
        (dict(family="v2", channels=116, depth=2, split=0.375), "stages[1].split", "not a whole number"),
        (dict(family="v2", channels=117, depth=2), "stages[1].channels", "must be even"),
        (dict(family="v2", channels=116, depth=2, split=1.0), "stages[1].split", "strictly between"),
        (dict(family="v2", channels=116, depth=2, groups=2), "stages[1].groups", "must be 1"),
        (dict(family="v1", channels=40, depth=2, groups=1), "stages[1].channels", "must exceed"),
        (dict(family="v2", channels=116, depth=3, kernel=(3, 5)), "stages[1].kernel", "3 units"),
        (dict(family="v2", channels=116, depth=2, kernel=4), "stages[1].kernel", "must be one of"),
        (dict(family="v3", channels=116, depth=2), "stages[1].family", "must be one of"),
        (dict(family="v2", channels=116, depth=0), "stages[1].depth", ">= 1"),
        (dict(family="v2", channels=116, depth=2, stride=3), "stages[1].stride", "1 or 2"),
    ],
)
def test_validation_names_field_and_rule(stage, field, rule):
    first = Stage("v1", 48, 2, groups=1)  # 48 channels into stage 1
    if field is None:
        Arch(stages=(first, Stage(**stage)))
        return
    with pytest.raises(ArchError) as e:
        Arch(stages=(first, Stage(**stage)))
    msg = str(e.value)
    assert msg.startswith(field + ":"), msg
    assert rule in msg


def test_v1_stride2_arithmetic_needs_groups_to_divide_the_new_channels():
    # 240 - 24 = 216 is divisible by 3 (paper's g=3 layout); 242 - 24 = 218 is not.
    Arch(stages=(Stage("v1", 240, 1, groups=3),), stem=Stem(24), head=0)
    with pytest.raises(ArchError, match=r"stages\[0\]\.(groups|bottleneck)"):
        Arch(stages=(Stage("v1", 242, 1, groups=3, bottleneck=0.5),), stem=Stem(24), head=0)


def test_first_v1_pointwise_is_ungrouped():
    specs = unit_specs(preset("shufflenet_v1_g3_x1_0"))
    assert specs[0].first_groups == 1 and specs[0].groups == 3
    assert all(u.first_groups == 3 for u in specs[1:])


def test_small_input_stem_is_expressible():
    a = Arch(stages=(Stage("v2", 32, 2, stride=1), Stage("v2", 64, 2)), stem=Stem(16, 1, False), num_classes=10)
    assert a.total_stride == 2


def test_unknown_field_suggests_the_right_one():
    d = preset("shufflenet_v2_x0_5").to_dict()
    d["stages"][0]["splitt"] = 0.5
    with pytest.raises(ArchError, match=r"stages\[0\]\.splitt: unknown field \(did you mean 'split'\?\)"):
        Arch.from_dict(d)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "empty"),
        ("stages: [", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("stages: []", "stages: must be a non-empty list"),
        ("stages: [{family: v2, channels: '48', depth: 2}]", "stages[0].channels: must be int"),
        ("stages: [{family: v2, channels: 48}]", "stages[0].depth: required"),
        ("stages: [{family: v2, channels: 48, depth: 2}]\nstem: {channels: true}", "stem.channels: must be int"),
    ],
)
def test_malformed_arch_files(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ArchError) as e:
        load_arch(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("!!python/object/apply:os.system ['echo hi']")
    with pytest.raises(ArchError, match="not valid YAML"):
        load_arch(p)


def test_to_yaml_is_plain_yaml():
    d = yaml.safe_load(preset("shufflenet_v1_g8_x0_5").to_yaml())
    assert d["archid"] == preset("shufflenet_v1_g8_x0_5").archid
    assert d["stem"]["channels"] == 16  # Megvii's stem for g=8 at 0.5x


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "shufflesearch.cli", *args], capture_output=True, text=True, timeout=300)


def test_show_cli_table_json_and_bad_file(tmp_path):
    r = _cli("show", "shufflenet_v2_x1_0")
    assert r.returncode == 0 and "144.908M" in r.stdout and "2.279M" in r.stdout
    r = _cli("show", "shufflenet_v2_x0_5", "--json", "--resolution", "160")
    d = json.loads(r.stdout)
    assert d["params"] == 1_366_792 and d["archid"] == preset("shufflenet_v2_x0_5").archid
    assert {"params", "macs", "mac"} <= set(d) and "stages.0.0.main.pw1.conv" in d["nodes"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {family: v1, channels: 240, depth: 4, groups: 3}\n"
                   "  - {family: v1, channels: 116, depth: 8, groups: 3}\n")
    r = _cli("show", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {bad}: stages[1].groups: 3 does not divide 116"


def test_public_api_names_resolve_and_stay_functions():
    import shufflesearch as ss

    for name in ss.__all__:
        first = getattr(ss, name)
        assert getattr(ss, name) is first, name  # a submodule import must not shadow it
    assert callable(ss.run_search) and ss.run_search.__name__ == "search"
