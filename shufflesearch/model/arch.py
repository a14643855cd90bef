"""Arch: the plain, frozen description of one ShuffleNet-family network.

Everything else (the op graph, the costs, the nn.Module, the exported source) is derived from
an Arch and never read back from a module. An Arch round-trips through YAML/JSON and has a
stable ``archid``: the hash of its canonical form, so that duplicates found by a search are
recognised whatever order the fields were written in.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ..common.yamlio import parse_yaml, read_text
from ..errors import UserError

FAMILIES = ("v1", "v2")
KERNELS = (3, 5, 7)
LAYOUTS = ("torchvision", "megvii")


class ArchError(UserError):
    """An architecture that cannot be built; the message names the field and the rule."""


@dataclass(frozen=True)
class Stem:
    channels: int = 24  # output channels of the 3x3 stem conv
    stride: int = 2  # 2 for ImageNet-sized input, 1 for 32x32 data
    pool: bool = True  # 3x3 stride-2 max-pool after the conv (the papers' stem)


@dataclass(frozen=True)
class Stage:
    family: str  # "v1" (grouped 1x1 + add) or "v2" (channel split + concat)
    channels: int  # output channels of every unit in the stage
    depth: int  # number of units; the first one changes width and/or resolution
    stride: int = 2  # stride of the first unit
    kernel: int | tuple[int, ...] = 3  # depthwise kernel: one for all units, or one per unit
    split: float = 0.5  # v2: fraction of channels that goes through the branch (paper: 1/2)
    groups: int = 1  # v1: groups of the 1x1 convs (paper: 1, 2, 3, 4, 8)
    bottleneck: float = 0.25  # v1: mid width = channels * bottleneck (paper: 1/4)
    layout: str = "torchvision"  # v2 stride-2 unit: "torchvision" (both branches emit
    #   channels/2) or "megvii" (the projection keeps its input width, as in the paper's code)

    def kernels(self) -> tuple[int, ...]:
        """The depthwise kernel of every unit in the stage."""
        if isinstance(self.kernel, int):
            return (self.kernel,) * self.depth
        return tuple(self.kernel)


@dataclass(frozen=True)
class Arch:
    stages: tuple[Stage, ...]
    stem: Stem = field(default_factory=Stem)
    head: int = 1024  # width of the final 1x1 conv ("conv5" in V2); 0 for none (V1)
    num_classes: int = 1000
    in_channels: int = 3
    fc_bias: bool = True  # torchvision's FC has a bias, Megvii's does not

    def __post_init__(self) -> None:
        # Accept lists from YAML/JSON but store tuples so the Arch stays hashable.
        object.__setattr__(self, "stages", tuple(self.stages))
        for i, s in enumerate(self.stages):
            if isinstance(s.kernel, list):
                object.__setattr__(self.stages[i], "kernel", tuple(s.kernel))
        validate(self)

    # --- derived facts -------------------------------------------------------------------
    @property
    def archid(self) -> str:
        """Stable 12-hex-digit id: sha256 of the canonical JSON form."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(s.family for s in self.stages)

    @property
    def total_stride(self) -> int:
        st = self.stem.stride * (2 if self.stem.pool else 1)
        for s in self.stages:
            st *= s.stride
        return st

    def replace(self, **changes: Any) -> Arch:
        return dataclasses.replace(self, **changes)

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Canonical plain form: every field present, kernels collapsed when uniform."""
        stages = []
        for s in self.stages:
            ks = s.kernels()
            stages.append(
                {
                    "family": s.family,
                    "channels": s.channels,
                    "depth": s.depth,
                    "stride": s.stride,
                    "kernel": ks[0] if len(set(ks)) == 1 else list(ks),
                    "split": float(s.split),
                    "groups": s.groups,
                    "bottleneck": float(s.bottleneck),
                    "layout": s.layout,
                }
            )
        return {
            "in_channels": self.in_channels,
            "stem": dataclasses.asdict(self.stem),
            "stages": stages,
            "head": self.head,
            "num_classes": self.num_classes,
            "fc_bias": self.fc_bias,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> Arch:
        """Build from a plain mapping; unknown or mistyped fields raise ArchError."""
        pre = f"{where}: " if where else ""
        if not isinstance(d, Mapping):
            raise ArchError(f"{pre}an architecture must be a mapping, got {type(d).__name__}")
        d = dict(d)
        d.pop("archid", None)  # written for humans by to_yaml; recomputed, never trusted
        d.pop("name", None)
        _check_keys(d, {f.name for f in dataclasses.fields(cls)}, pre, "")
        if "stages" not in d:
            raise ArchError(f"{pre}stages: required (a list of stages)")
        if not isinstance(d["stages"], list) or not d["stages"]:
            raise ArchError(f"{pre}stages: must be a non-empty list")
        stages = []
        for i, sd in enumerate(d["stages"]):
            if not isinstance(sd, Mapping):
                raise ArchError(f"{pre}stages[{i}]: must be a mapping")
            _check_keys(sd, {f.name for f in dataclasses.fields(Stage)}, pre, f"stages[{i}].")
            for req in ("family", "channels", "depth"):
                if req not in sd:
                    raise ArchError(f"{pre}stages[{i}].{req}: required")
            sd = dict(sd)
            if isinstance(sd.get("kernel"), list):
                sd["kernel"] = tuple(sd["kernel"])
            _check_types(sd, Stage, f"{pre}stages[{i}].")
            stages.append(Stage(**sd))
        stem = d.get("stem", {})
        if not isinstance(stem, Mapping):
            raise ArchError(f"{pre}stem: must be a mapping")
        _check_keys(stem, {f.name for f in dataclasses.fields(Stem)}, pre, "stem.")
        _check_types(stem, Stem, f"{pre}stem.")
        rest = {k: v for k, v in d.items() if k not in ("stages", "stem")}
        _check_types(rest, Arch, pre)
        try:
            return cls(stages=tuple(stages), stem=Stem(**stem), **rest)
        except ArchError as e:
            raise ArchError(f"{pre}{e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_yaml(self) -> str:
        d = {"archid": self.archid, **self.to_dict()}
        return yaml.safe_dump(d, sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str, where: str = "") -> Arch:
        try:
            d = parse_yaml(text, where or "<arch>")
        except UserError as e:
            raise ArchError(str(e)) from None
        return cls.from_dict(d, where)


def _check_keys(d: Mapping[str, Any], allowed: set[str], pre: str, path: str) -> None:
    for k in d:
        if k not in allowed:
            hint = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            dym = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ArchError(f"{pre}{path}{k}: unknown field{dym}")


_TYPES: dict[str, tuple[type, ...]] = {
    "channels": (int,),
    "depth": (int,),
    "stride": (int,),
    "groups": (int,),
    "head": (int,),
    "num_classes": (int,),
    "in_channels": (int,),
    "split": (int, float),
    "bottleneck": (int, float),
    "family": (str,),
    "layout": (str,),
    "pool": (bool,),
    "fc_bias": (bool,),
    "kernel": (int, tuple),
}


def _check_types(d: Mapping[str, Any], cls: type, pre: str) -> None:
    for k, v in d.items():
        want = _TYPES.get(k)
        if want is None:
            continue
        ok = isinstance(v, want) and not (isinstance(v, bool) and bool not in want)
        if isinstance(v, tuple):
            ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        if not ok:
            names = " or ".join("list of ints" if t is tuple else t.__name__ for t in want)
            raise ArchError(f"{pre}{k}: must be {names}, got {v!r}")


# --- validation -------------------------------------------------------------------------


def _integral(x: float) -> bool:
    return abs(x - round(x)) < 1e-9


def _err(path: str, msg: str) -> NoReturn:
    raise ArchError(f"{path}: {msg}")


def validate(a: Arch) -> None:
    """Raise ArchError naming the first field that breaks a rule of construction."""
    _validate_whole(a)
    c_in = a.stem.channels
    for i, s in enumerate(a.stages):
        p = f"stages[{i}]"
        _validate_stage(p, s)
        if s.family == "v2":
            _validate_v2(p, s, c_in)
        else:
            _validate_v1(i, p, s, c_in)
        c_in = s.channels


def _validate_whole(a: Arch) -> None:
    """The fields outside the stages, and that there are stages."""
    if a.in_channels < 1:
        _err("in_channels", f"must be >= 1, got {a.in_channels}")
    if a.num_classes < 1:
        _err("num_classes", f"must be >= 1, got {a.num_classes}")
    if a.head < 0:
        _err("head", f"must be >= 0 (0 means no final conv), got {a.head}")
    if a.stem.channels < 1:
        _err("stem.channels", f"must be >= 1, got {a.stem.channels}")
    if a.stem.stride not in (1, 2):
        _err("stem.stride", f"must be 1 or 2, got {a.stem.stride}")
    if not a.stages:
        _err("stages", "at least one stage is required")


def _validate_stage(p: str, s: Stage) -> None:
    """The rules every family shares: family, widths, depth, stride, kernels."""
    if s.family not in FAMILIES:
        _err(f"{p}.family", f"must be one of {', '.join(FAMILIES)}, got {s.family!r}")
    if s.channels < 1:
        _err(f"{p}.channels", f"must be >= 1, got {s.channels}")
    if s.depth < 1:
        _err(f"{p}.depth", f"must be >= 1, got {s.depth}")
    if s.stride not in (1, 2):
        _err(f"{p}.stride", f"must be 1 or 2, got {s.stride}")
    ks = s.kernels()
    if len(ks) != s.depth:
        _err(f"{p}.kernel", f"gives {len(ks)} kernels for {s.depth} units")
    for j, k in enumerate(ks):
        if k not in KERNELS:
            at = f"{p}.kernel" if isinstance(s.kernel, int) else f"{p}.kernel[{j}]"
            _err(at, f"must be one of {KERNELS}, got {k}")


def _validate_v2(p: str, s: Stage, c_in: int) -> None:
    """A V2 stage: a channel split into two whole, non-empty branches, no grouped 1x1s."""
    c = s.channels
    if s.layout not in LAYOUTS:
        _err(f"{p}.layout", f"must be one of {', '.join(LAYOUTS)}, got {s.layout!r}")
    if not 0 < s.split < 1:
        _err(f"{p}.split", f"must lie strictly between 0 and 1, got {s.split}")
    if s.groups != 1:
        _err(f"{p}.groups", "v2 units have no grouped 1x1 convs; must be 1")
    if c % 2:
        _err(f"{p}.channels", f"{c} must be even (the channel shuffle uses 2 groups)")
    branch = c * s.split
    if not _integral(branch):
        _err(f"{p}.split", f"{s.split} of {c} channels is {branch:g}, not a whole number")
    if s.depth > 1 and not 0 < round(branch) < c:
        _err(f"{p}.split", f"{s.split} of {c} channels leaves one side empty")
    if s.layout == "megvii" and c - c_in < 1:
        _err(
            f"{p}.channels",
            f"{c} must exceed the input width {c_in} in the megvii layout "
            "(the main branch emits channels - input)",
        )
    if s.layout == "torchvision" and not 0 < round(branch) < c:
        _err(f"{p}.split", f"{s.split} of {c} channels leaves one side empty")


def _validate_v1(i: int, p: str, s: Stage, c_in: int) -> None:
    """A V1 stage: groups that divide every grouped 1x1's input and output widths."""
    c, g = s.channels, s.groups
    if g < 1:
        _err(f"{p}.groups", f"must be >= 1, got {g}")
    if s.split != 0.5:
        _err(f"{p}.split", "v1 units do not split channels; leave it at 0.5")
    if c % g:
        _err(f"{p}.groups", f"{g} does not divide {c}")
    mid = c * s.bottleneck
    if not _integral(mid) or mid < 1:
        _err(f"{p}.bottleneck", f"{s.bottleneck} of {c} channels is {mid:g}, not a whole number >= 1")
    mid = round(mid)
    if mid % g:
        _err(f"{p}.groups", f"{g} does not divide the bottleneck width {mid}")
    if i > 0 and c_in % g:  # the very first 1x1 (on the stem's output) is ungrouped
        _err(f"{p}.groups", f"{g} does not divide the stage's input width {c_in}")
    if s.stride == 2 or c != c_in:
        if c - c_in < 1:
            _err(
                f"{p}.channels",
                f"{c} must exceed the input width {c_in} (a v1 downsampling unit "
                "concatenates its input with channels - input new ones)",
            )
        if (c - c_in) % g:
            _err(f"{p}.groups", f"{g} does not divide channels - input = {c - c_in}")


# --- presets ------------------------------------------------------------------------------

V2_WIDTHS = {  # torchvision / paper Table 5: stage2..4 and conv5 widths
    "0_5": (48, 96, 192, 1024),
    "1_0": (116, 232, 464, 1024),
    "1_5": (176, 352, 704, 1024),
    "2_0": (244, 488, 976, 2048),
}
V1_WIDTHS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}  # stage-2 width at 1x (paper Table 1)
SCALES = {"0_5": 0.5, "1_0": 1.0, "1_5": 1.5, "2_0": 2.0}
DEPTHS = (4, 8, 4)


def _v2(width: str, layout: str = "torchvision") -> Arch:
    c2, c3, c4, c5 = V2_WIDTHS[width]
    stages = tuple(Stage("v2", c, d, layout=layout) for c, d in zip((c2, c3, c4), DEPTHS))
    return Arch(stages=stages, head=c5, fc_bias=layout == "torchvision")


def _v1(groups: int, width: str) -> Arch:
    """Megvii's V1 layout; off-1x widths are rounded to a multiple of 4g so the bottleneck
    (width/4) divides into g groups, and the stem follows Megvii's 12/24/24/48 for g=3."""
    s = SCALES[width]
    base = V1_WIDTHS[groups] * s
    c2 = max(4 * groups, int(4 * groups * math.floor(base / (4 * groups) + 0.5)))
    stem = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}[s]
    while (c2 - stem) % groups:  # Megvii uses 16 for g=8 at 0.5x for the same reason
        stem += 1
    stages = tuple(
        Stage("v1", c2 * m, d, groups=groups) for m, d in zip((1, 2, 4), DEPTHS)
    )
    return Arch(stages=stages, stem=Stem(channels=stem), head=0, fc_bias=False)


def _build_presets() -> dict[str, Arch]:
    p: dict[str, Arch] = {}
    for w in V2_WIDTHS:
        p[f"shufflenet_v2_x{w}"] = _v2(w)
    for w in V2_WIDTHS:
        p[f"shufflenet_v2_megvii_x{w}"] = _v2(w, "megvii")
    for g in V1_WIDTHS:
        for w in SCALES:
            p[f"shufflenet_v1_g{g}_x{w}"] = _v1(g, w)
    return p


PRESETS: dict[str, Arch] = _build_presets()


def preset(name: str) -> Arch:
    """A hand-designed ShuffleNet from the papers (see ``PRESETS`` for the names)."""
    try:
        return PRESETS[name]
    except KeyError:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        dym = f"; did you mean '{hint[0]}'?" if hint else ""
        raise ArchError(f"unknown preset '{name}'{dym} (see `shufflesearch show --list`)") from None


def preset_name(arch: Arch) -> str | None:
    """The preset this Arch equals, if any (compared by archid)."""
    for name, a in PRESETS.items():
        if a.archid == arch.archid:
            return name
    return None


def load_arch(path: str | Path) -> Arch:
    """Read an Arch from a .yaml/.yml/.json file (the format `export` writes)."""
    path = Path(path)
    try:
        text = read_text(path)
    except UserError as e:
        raise ArchError(str(e)) from None
    if path.suffix == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArchError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        return Arch.from_dict(d, str(path))
    return Arch.from_yaml(text, str(path))


def resolve_arch(spec: str | Path | Arch) -> Arch:
    """A preset name, an arch file path, or an Arch. Only the edges call this (the CLI and the
    public API in shufflesearch/__init__.py); the stages below take an Arch."""
    if isinstance(spec, Arch):
        return spec
    spec = str(spec)
    if spec in PRESETS:
        return PRESETS[spec]
    if Path(spec).suffix in (".yaml", ".yml", ".json") or Path(spec).exists():
        return load_arch(spec)
    return preset(spec)
