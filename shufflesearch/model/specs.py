"""Arch → UnitSpecs: every unit of an Arch with its channel arithmetic done once.

graph.py (the OpGraph), units.py (the nn.Modules), codegen.py (the exported source) and the
cost tables all build from these, so a width is worked out in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import Arch


@dataclass(frozen=True)
class UnitSpec:
    """One unit with every width resolved; graph.py and units.py both build from these."""

    name: str  # module path, e.g. "stages.1.0"
    stage: int
    index: int  # position in the stage
    family: str
    c_in: int
    c_out: int
    stride: int
    kernel: int
    down: bool  # the two-branch form (stride 2 or a width change): no split, no identity add
    mid: int  # width inside the main branch (after its first 1x1)
    main_in: int  # channels entering the main branch
    main_out: int  # channels the main branch emits
    proj_out: int  # v2 down: projection branch width; v1 down: the pooled shortcut (= c_in)
    groups: int = 1  # v1: groups of the second 1x1 (and of the first, but see first_groups)
    first_groups: int = 1  # v1: groups of the first 1x1 (1 on the stem's output)

    @property
    def identity(self) -> int:
        """v2 basic unit: channels that bypass the branch."""
        return self.c_in - self.main_in


def unit_specs(a: Arch) -> list[UnitSpec]:
    specs: list[UnitSpec] = []
    c_in = a.stem.channels
    for i, s in enumerate(a.stages):
        for j, k in enumerate(s.kernels()):
            stride = s.stride if j == 0 else 1
            down = j == 0 and (stride == 2 or c_in != s.channels)
            c = s.channels
            name = f"stages.{i}.{j}"
            if s.family == "v2":
                b = round(c * s.split)
                if not down:
                    spec = UnitSpec(name, i, j, "v2", c_in, c, 1, k, False, b, b, b, 0)
                elif s.layout == "megvii":
                    spec = UnitSpec(name, i, j, "v2", c_in, c, stride, k, True, b, c_in, c - c_in, c_in)
                else:
                    spec = UnitSpec(name, i, j, "v2", c_in, c, stride, k, True, b, c_in, b, c - b)
            else:
                mid = round(c * s.bottleneck)
                g1 = 1 if (i == 0 and j == 0) else s.groups
                out = c - c_in if down else c
                spec = UnitSpec(
                    name, i, j, "v1", c_in, c, stride, k, down, mid, c_in, out,
                    c_in if down else 0, s.groups, g1,
                )
            specs.append(spec)
            c_in = c
    return specs
