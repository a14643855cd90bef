"""A space file's one config mechanism: a typed model per section, one reader, the resolved
config (and the run's fingerprint) written from the typed models, and the YAML reference
rendered from the same models."""

from __future__ import annotations

import re

import pytest
import yaml

from shufflesearch.accuracy.data import DataSpec
from shufflesearch.accuracy.fidelity import FidelitySettings
from shufflesearch.common.settings import SettingError
from shufflesearch.common.yamlio import Located, load_yaml
from shufflesearch.errors import UserError
from shufflesearch.guidelines.checks import GuidelineSettings
from shufflesearch.measure.target import TargetSpec
from shufflesearch.search.config import LISTED, SpaceConfig, entries, join, model_of, yaml_reference
from shufflesearch.search.reader import read_section
from shufflesearch.search.space import load_space, parse_space
from tests.conftest import ROOT, SPACES

TINY = SPACES / "tiny.yaml"
SPACE_FILES = sorted((ROOT / "search_spaces").glob("*.yaml")) + sorted(SPACES.glob("*.yaml"))

# Fingerprints of these files as the previous reader computed them (its hand-built resolved
# config, before the typed models): run folders made then compare them when they resume.
PINNED = {
    "search_spaces/mixed.yaml": "f4e04fc436889b11",
    "search_spaces/spos.yaml": "ad51d02409dde7fe",
    "search_spaces/v1.yaml": "aecaaaae51a3554a",
    "search_spaces/v2.yaml": "8a83fc7db7c16b82",
    "tests/spaces/ladder.yaml": "b9a56f98fd90c24c",
    "tests/spaces/random_archs.yaml": "e68012a5716a5790",
    "tests/spaces/review.yaml": "8a2eaed50fd359e2",
    "tests/spaces/tiny.yaml": "45fd3d3a75b93e7d",
}
# The same for variants of tiny.yaml, each written as NAME.yaml (the name is part of the
# config), also taken from the previous reader: numbers as written, partial sections, short
# spellings, sections left out.
VARIANTS = [
    ("tiny_max_seconds_int", "max_seconds: 0.1", "max_seconds: 1", "6d0667a653461f0a"),
    ("tiny_constraints_int", "baselines: []",
     "constraints: {latency_ms: 5, params_m: 1.5, guideline_penalty: 0}\nbaselines: []", "b6db8750f8911269"),
    ("tiny_guidelines", "baselines: []", "guidelines: {mode: penalize, weight: 10, settings: {g3_max_paths: 4, "
     "g1_max_excess: 0.2, weights: {G1: 2}, fold_bn: false}}\nbaselines: []", "2e3ffea87c5759e0"),
    ("tiny_stem_none", "  stem: {channels: 8, stride: 1, pool: false}\n", "", "8406ca7dc82a4035"),
    ("tiny_fid_none", "baselines: []", "baselines: []\nfidelity: none", "8946fc98eb018c25"),
    ("tiny_fid_partial", "baselines: []",
     "baselines: []\nfidelity: {rungs: [4, 9], check: {seeds: 3}, device: cpu}", "46f13b427d60f089"),
    ("tiny_sampler_str", "sampler: {name: tpe, n_startup_trials: 4}", "sampler: nsga2", "5a6d6dae65b66927"),
    ("tiny_objectives_dict", "objectives: [proxy, latency]",
     "objectives: [{name: proxy}, {name: mac, direction: minimize}, params]", "703a3736ec6e3fb9"),
    ("tiny_vf_cf", "batch: 16}", "batch: 16, val_fraction: 0.3, check_fraction: 0.25}", "c706b57389ba4fb2"),
    ("tiny_backend", "max_seconds: 0.1}",
     "max_seconds: 0.1, backend: onnxruntime, channels_last: false, prefilter: 0.5}", "a12b461bab7a8995"),
    ("tiny_baselines_auto", "baselines: []", "baselines: auto", "c41751e4be1ce4e6"),
    ("tiny_no_target", "target: {resolution: 32, batch: 1, threads: 1, num_classes: 10, max_seconds: 0.1}\n", "",
     "fd6f488ddb5d20e3"),
    ("tiny_width_nostep", "width: {low: 32, high: 64, step: 16}", "width: {low: 32, high: 40}", "141ff802a61b12db"),
    ("tiny_stage_full", "kernel: [3]}", "kernel: [3], stride: 2, per_unit_kernel: true, bottleneck: [0.25, 0.5], "
     "layout: torchvision}", "3e7e1d8740a1dcd7"),
]


def _reloaded(raw: dict) -> str:
    """The fingerprint of a resolved config read back as the run folder reads config.yaml."""
    data = yaml.safe_load(yaml.safe_dump(raw))
    data["objectives"] = [n for n, _ in data["objectives"]]
    return parse_space(Located(data, {}, "config.yaml")).fingerprint()


@pytest.mark.parametrize("rel, fp", PINNED.items())
def test_existing_files_keep_their_fingerprint(rel, fp):
    space = load_space(ROOT / rel)
    assert space.fingerprint() == fp
    assert _reloaded(space.raw) == fp  # and config.yaml reads back to the same space


@pytest.mark.parametrize("name, old, new, fp", VARIANTS)
def test_variants_keep_their_fingerprint(tmp_path, name, old, new, fp):
    text = TINY.read_text()
    assert old in text
    (tmp_path / f"{name}.yaml").write_text(text.replace(old, new, 1))
    space = load_space(tmp_path / f"{name}.yaml")
    assert space.fingerprint() == fp and _reloaded(space.raw) == fp


@pytest.mark.parametrize("f", SPACE_FILES, ids=lambda f: f.stem)
def test_the_resolved_config_lists_only_given_and_listed_keys(f):
    # What keeps a new key from changing an existing run's fingerprint: a key the file leaves
    # out is written only when LISTED (the first releases' keys) names it.
    space = load_space(f)

    def paths(d: dict, path: str) -> list[str]:
        out = []
        for k, v in d.items():
            p = join(path, k)
            out.append(p)
            if isinstance(v, dict) and p != "space":  # the space block is written as given
                out += paths(v, p)
        return out

    written = paths(space.raw, "")
    assert all(p in LISTED or p in space.given for p in written), sorted(set(written) - LISTED - space.given)
    assert not any(p in space.given for p in ("proxy.val_fraction", "proxy.check_fraction"))
    assert "val_fraction" not in space.raw["proxy"]


def test_numbers_stay_as_written_and_limits_are_floats(tmp_path):
    p = tmp_path / "n.yaml"
    p.write_text(TINY.read_text().replace("max_seconds: 0.1", "max_seconds: 2").replace(
        "baselines: []", "constraints: {macs_m: 330}\nbaselines: []"))
    space = load_space(p)
    assert space.raw["target"]["max_seconds"] == 2 and isinstance(space.raw["target"]["max_seconds"], int)
    assert space.constraints == {"macs_m": 330.0} and isinstance(space.raw["constraints"]["macs_m"], float)


def test_lower_stages_receive_typed_objects(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(TINY.read_text().replace("seed: 0", "seed: 7") + "fidelity: {rungs: [2, 4]}\n")
    space = load_space(p)
    assert isinstance(space.target, TargetSpec) and space.target.channels_last  # a space's default
    assert not TargetSpec().channels_last  # the model's own, for the library's callers
    assert space.data == DataSpec(name="digits", resolution=16, batch=16, seed=7)  # the file's seed
    assert isinstance(space.guidelines.settings, GuidelineSettings)
    assert space.fidelity == FidelitySettings(rungs=(2, 4))
    assert space.objectives == [("proxy", "maximize"), ("latency", "minimize")]


def _keys(cls: type = SpaceConfig, path: str = "") -> set[str]:
    """Every key path the reader accepts: the key sets it checks a file's mappings against."""
    out = set()
    for key, e in entries(cls).items():
        p = join(path, key)
        out.add(p)
        sub, many = model_of(e.type)
        if sub is not None:
            out |= _keys(sub, p + ("[i]" if many else ""))
    return out


def _reference_keys(text: str) -> set[str]:
    out, section = set(), None
    for line in text.splitlines():
        if m := re.match(r"## (?:`(.+)`|The file)$", line):
            section = m.group(1) or ""
        elif m := re.match(r"\| `(\w+)` \|", line):
            assert section is not None, line
            out.add(join(section, m.group(1)))
    return out


def test_the_reference_lists_every_key_the_reader_accepts():
    ref = yaml_reference()
    listed = _reference_keys(ref)
    assert _keys() <= listed and len(listed) > 60
    for row in (r for r in ref.splitlines() if r.startswith("| `")):
        assert row.count("|") == 6 and row.split("|")[5].strip(), row  # every key has a description
    assert "| `dataset` | string | `fashion` |" in ref  # YAML names, a file's defaults
    assert "| `channels_last` | bool | `true` |" in ref
    # What the shipped files write is in it (a searchable key's list items and range keys
    # belong to the key).
    for f in SPACE_FILES:
        for p in load_yaml(f).lines:
            p = re.sub(r"\[\d+\]", "[i]", p)
            p = re.sub(r"(\[i\]|\.low|\.high|\.step)$", "", p)
            assert not p or p in listed or p.removesuffix("[i]") in listed, (f.name, p)


@pytest.mark.parametrize("section", ["", "target", "proxy", "space", "space.stem", "space.stages[1]",
                                     "constraints", "guidelines", "guidelines.settings", "sampler",
                                     "fidelity", "fidelity.check"])
def test_every_section_refuses_unknown_keys_with_a_suggestion(tmp_path, section):
    doc = yaml.safe_load(TINY.read_text())
    node, cls = doc, SpaceConfig
    for part in filter(None, re.split(r"\.|\[(\d+)\]", section)):
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        cls = cls if part.isdigit() else model_of(entries(cls)[part].type)[0]
    key = next(k for k in entries(cls) if len(k) >= 4)
    node[key[:-1] + key[-1].upper()] = 1  # a typo of a real key
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as e:
        load_space(p)
    assert f": {join(section, key[:-1] + key[-1].upper())}: unknown key (did you mean '{key}'?)" in str(e.value)


@pytest.mark.parametrize("old, new, line, needle", [
    ("batch: 16}", "batch: 1}", 4, "proxy.batch: 1 is out of range [2, 4096]"),
    ("dataset: digits", "dataset: imagenet", 4, "proxy.dataset: 'imagenet' is not 'fashion'"),
    ("batch: 16}", "batch: 16, val_fraction: 0.5, check_fraction: 0.45}", 4,
     "proxy.check_fraction: val_fraction + check_fraction = 0.95 must stay below 0.9"),
    ("max_seconds: 0.1", "max_seconds: .nan", 3, "target.max_seconds: must be a finite number"),
    ("kernel: [3]}", "kernel: [3], stride: true}", 9, "space.stages[1].stride: must be one of 1, 2, got True"),
    ("objectives: [proxy, latency]", "objectives: [proxy, latency, proxy]", 11, "objectives[2]: proxy is listed twice"),
    ("sampler: {name: tpe, n_startup_trials: 4}", "sampler: cmaes", 12, "sampler: must be one of tpe"),
    ("baselines: []", "baselines: 5", 13, "baselines: must be 'auto', a list of preset names, or []"),
])
def test_errors_name_line_field_and_rule(tmp_path, old, new, line, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(TINY.read_text().replace(old, new, 1))
    with pytest.raises(UserError) as e:
        load_space(p)
    assert str(e.value) == f"{p}:{line}: {needle}" or str(e.value).startswith(f"{p}:{line}: {needle}")
    assert len(str(e.value).splitlines()) == 1


def test_one_section_read_from_another_file():
    proxy = read_section("proxy", {"dataset": "digits", "resolution": 16, "batch": 32, "proxies": None,
                                   "short_train_top_k": 0})
    assert proxy.data == DataSpec(name="digits", resolution=16, batch=32)
    with pytest.raises(UserError, match=r"^set.yaml: proxy.colour: unknown key \(allowed: dataset"):
        read_section("proxy", {"colour": 1}, "set.yaml")
    with pytest.raises(UserError, match=r"^--rungs: fidelity.rungs: \[4, 2\] must increase strictly"):
        read_section("fidelity", {"rungs": [4, 2]}, "--rungs")


def test_models_built_in_code_are_checked_by_the_same_rules():
    with pytest.raises(SettingError) as e:
        TargetSpec(resolution=4)
    assert (e.value.field, e.value.rule) == ("resolution", "4 is out of range [8, 4096]")
    with pytest.raises(UserError, match="DataSpec.check_fraction: val_fraction"):
        DataSpec(val_fraction=0.6, check_fraction=0.35)
    assert FidelitySettings(rungs=[3, 5]).rungs == (3, 5)  # a list is kept as the tuple it reads as
