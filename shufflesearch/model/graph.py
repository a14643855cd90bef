"""Arch → OpGraph: a networkx.DiGraph with one node per op and its shapes.

Node names are the module paths of the compiled training-form model (``stages.1.0.main.pw1.conv``
is ``model.stages[1][0].main.pw1.conv``), so every finding about a node points at a real module.
Parallel branches are parallel paths: a V2 unit's split forks into the identity edge and the
branch, and its concat joins them.

Node attributes (every node):
    op          "input" | "conv" | "bn" | "relu" | "maxpool" | "avgpool" | "split" | "concat"
                | "shuffle" | "add" | "gap" | "linear"
    in_shapes   list of (C, H, W) per input, in input order (batch excluded)
    out_shapes  list of (C, H, W) per output (only "split" has two)
    unit        "stem", "stages.i.j", "head" or "classifier"
    stage       stage index, or None outside the stages
    branch      "main", "proj" or None
Per op: conv: c_in, c_out, k, stride, groups, depthwise, bias; bn: channels; shuffle: groups;
split: sizes; maxpool/avgpool: k, stride; linear: in_features, out_features, bias.
Edge attributes: ``src_port`` (which output of the source) and ``dst_port`` (which input).
"""

from __future__ import annotations

import networkx as nx

from .arch import Arch
from .specs import UnitSpec, unit_specs

Shape = tuple[int, int, int]  # (C, H, W)


def conv_out(h: int, k: int, stride: int) -> int:
    """Spatial size after a k x k conv/pool with 'same' padding k//2 (all of ours)."""
    return (h + 2 * (k // 2) - k) // stride + 1


class _Builder:
    def __init__(self) -> None:
        self.g = nx.DiGraph()

    def add(
        self,
        name: str,
        op: str,
        inputs: list[tuple[str, int]],
        out_shapes: list[Shape],
        ctx: dict,
        **attrs,
    ) -> str:
        in_shapes = [self.g.nodes[src]["out_shapes"][port] for src, port in inputs]
        self.g.add_node(name, op=op, in_shapes=in_shapes, out_shapes=out_shapes, **ctx, **attrs)
        for dst_port, (src, src_port) in enumerate(inputs):
            self.g.add_edge(src, name, src_port=src_port, dst_port=dst_port)
        return name

    def shape(self, src: tuple[str, int]) -> Shape:
        return self.g.nodes[src[0]]["out_shapes"][src[1]]

    def conv_bn(
        self, prefix: str, x: tuple[str, int], c_out: int, k: int, stride: int,
        groups: int, relu: bool, ctx: dict,
    ) -> tuple[str, int]:
        c, h, w = self.shape(x)
        ho, wo = conv_out(h, k, stride), conv_out(w, k, stride)
        dw = groups == c == c_out and groups > 1
        n = self.add(
            f"{prefix}.conv", "conv", [x], [(c_out, ho, wo)], ctx,
            c_in=c, c_out=c_out, k=k, stride=stride, groups=groups, depthwise=dw, bias=False,
        )
        n = self.add(f"{prefix}.bn", "bn", [(n, 0)], [(c_out, ho, wo)], ctx, channels=c_out)
        if relu:
            n = self.add(f"{prefix}.relu", "relu", [(n, 0)], [(c_out, ho, wo)], ctx)
        return (n, 0)

    def pool(self, name: str, op: str, x: tuple[str, int], k: int, stride: int, ctx: dict):
        c, h, w = self.shape(x)
        out = (c, conv_out(h, k, stride), conv_out(w, k, stride))
        return (self.add(name, op, [x], [out], ctx, k=k, stride=stride), 0)

    def shuffle(self, name: str, x: tuple[str, int], groups: int, ctx: dict):
        return (self.add(name, "shuffle", [x], [self.shape(x)], ctx, groups=groups), 0)

    def concat(self, name: str, xs: list[tuple[str, int]], ctx: dict):
        shapes = [self.shape(x) for x in xs]
        c = sum(s[0] for s in shapes)
        return (self.add(name, "concat", xs, [(c, *shapes[0][1:])], ctx), 0)


def _unit(b: _Builder, u: UnitSpec, x: tuple[str, int]) -> tuple[str, int]:
    p = u.name
    ctx = {"unit": p, "stage": u.stage, "branch": None}
    main = {**ctx, "branch": "main"}
    proj = {**ctx, "branch": "proj"}
    k = u.kernel
    if u.family == "v2":
        if u.down:
            # Projection branch: DW k x k stride s → 1x1 (paper Fig. 3d, left).
            y = b.conv_bn(f"{p}.proj.dw", x, u.c_in, k, u.stride, u.c_in, False, proj)
            y = b.conv_bn(f"{p}.proj.pw", y, u.proj_out, 1, 1, 1, True, proj)
            ident, z = y, x
        else:
            c, h, w = b.shape(x)
            s = b.add(
                f"{p}.split", "split", [x], [(u.identity, h, w), (u.main_in, h, w)], ctx,
                sizes=(u.identity, u.main_in),
            )
            ident, z = (s, 0), (s, 1)
        z = b.conv_bn(f"{p}.main.pw1", z, u.mid, 1, 1, 1, True, main)
        z = b.conv_bn(f"{p}.main.dw", z, u.mid, k, u.stride, u.mid, False, main)
        z = b.conv_bn(f"{p}.main.pw2", z, u.main_out, 1, 1, 1, True, main)
        y = b.concat(f"{p}.concat", [ident, z], ctx)
        return b.shuffle(f"{p}.shuffle", y, 2, ctx)
    # V1 (ShuffleNet V1 paper Fig. 2b/2c).
    z = b.conv_bn(f"{p}.main.pw1", x, u.mid, 1, 1, u.first_groups, True, main)
    if u.groups > 1:
        z = b.shuffle(f"{p}.main.shuffle", z, u.groups, main)
    z = b.conv_bn(f"{p}.main.dw", z, u.mid, k, u.stride, u.mid, False, main)
    z = b.conv_bn(f"{p}.main.pw2", z, u.main_out, 1, 1, u.groups, u.down, main)
    if u.down:
        sc = b.pool(f"{p}.proj.pool", "avgpool", x, 3, u.stride, proj) if u.stride == 2 else x
        return b.concat(f"{p}.concat", [sc, z], ctx)
    y = (b.add(f"{p}.add", "add", [z, x], [b.shape(x)], ctx), 0)
    return (b.add(f"{p}.relu", "relu", [y], [b.shape(y)], ctx), 0)


def op_graph(arch: Arch, resolution: int | tuple[int, int] = 224, num_classes: int | None = None) -> nx.DiGraph:
    """The op graph of ``arch`` on one input of ``resolution`` (int or (H, W))."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    b = _Builder()
    b.g.graph.update(archid=arch.archid, resolution=(h, w))
    stem = {"unit": "stem", "stage": None, "branch": None}
    x = (b.add("input", "input", [], [(arch.in_channels, h, w)], stem), 0)
    x = b.conv_bn("stem", x, arch.stem.channels, 3, arch.stem.stride, 1, True, stem)
    if arch.stem.pool:
        x = b.pool("stem.pool", "maxpool", x, 3, 2, stem)
    for u in unit_specs(arch):
        x = _unit(b, u, x)
    if arch.head:
        x = b.conv_bn("head", x, arch.head, 1, 1, 1, True, {"unit": "head", "stage": None, "branch": None})
    cls = {"unit": "classifier", "stage": None, "branch": None}
    c = b.shape(x)[0]
    x = (b.add("pool", "gap", [x], [(c, 1, 1)], cls), 0)
    n_out = num_classes or arch.num_classes
    b.add("fc", "linear", [x], [(n_out, 1, 1)], cls, in_features=c, out_features=n_out, bias=arch.fc_bias)
    return b.g
