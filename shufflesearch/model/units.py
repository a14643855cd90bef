"""The ShuffleNet building blocks as nn.Modules: channel shuffle, the V1 and V2 units, and the
network. Module paths match the OpGraph's node names (see graph.py).

The training form (everything above "inference form" below) depends only on torch and on
UnitSpec rows: codegen.py copies its source, as it is, into every exported model.py, so the
deployed file and the library cannot drift. Keep it that way (no Arch, no package imports,
lines of at most 100 characters).

Each unit comes in two forms:
  training form   conv → BN → ReLU as separate modules, ready to train or load weights into;
  inference form  BN folded into the conv, the V1 shuffle folded into the weights, and the V2
                  concat + channel shuffle done as a single interleaving copy (the paper's
                  "merged" element-wise op, Sec. 3). compile.to_inference converts.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch
from .specs import UnitSpec, unit_specs


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (V1 paper Fig. 1c): (B, g·n, H, W) → (B, n·g, H, W)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ConvBN(nn.Sequential):
    """k x k conv (no bias) → BN → optional ReLU; children are named conv, bn, relu."""

    def __init__(
        self, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, relu: bool = True
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(c_out),
        )
        if relu:
            layers["relu"] = nn.ReLU()
        super().__init__(layers)


class V2Unit(nn.Module):
    """ShuffleNet V2 unit (V2 paper Fig. 3c/3d). Basic: split → [identity | 1x1, DW, 1x1] →
    concat → shuffle. Down: [DW, 1x1 | 1x1, DW, 1x1] on the whole input → concat → shuffle."""

    def __init__(self, u: UnitSpec) -> None:
        super().__init__()
        self.split_sizes = None if u.down else (u.identity, u.main_in)
        if u.down:
            self.proj = nn.Sequential(OrderedDict(
                dw=ConvBN(u.c_in, u.c_in, u.kernel, u.stride, u.c_in, relu=False),
                pw=ConvBN(u.c_in, u.proj_out),
            ))
        else:
            self.proj = None
        self.main = nn.Sequential(OrderedDict(
            pw1=ConvBN(u.main_in, u.mid),
            dw=ConvBN(u.mid, u.mid, u.kernel, u.stride, u.mid, relu=False),
            pw2=ConvBN(u.mid, u.main_out),
        ))
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            y = torch.cat((self.proj(x), self.main(x)), dim=1)
        else:
            ident, z = torch.split(x, self.split_sizes, dim=1)
            y = torch.cat((ident, self.main(z)), dim=1)
        return self.shuffle(y)


class V1Unit(nn.Module):
    """ShuffleNet V1 unit (V1 paper Fig. 2b/2c): grouped 1x1 → shuffle → DW → grouped 1x1;
    basic: add the identity, then ReLU; down: concat with a 3x3 avg-pooled shortcut."""

    def __init__(self, u: UnitSpec) -> None:
        super().__init__()
        self.down = u.down
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            pw1=ConvBN(u.c_in, u.mid, 1, 1, u.first_groups)
        )
        if u.groups > 1:
            layers["shuffle"] = ChannelShuffle(u.groups)
        layers["dw"] = ConvBN(u.mid, u.mid, u.kernel, u.stride, u.mid, relu=False)
        layers["pw2"] = ConvBN(u.mid, u.main_out, 1, 1, u.groups, relu=u.down)
        self.main = nn.Sequential(layers)
        self.proj = (
            nn.Sequential(OrderedDict(pool=nn.AvgPool2d(3, 2, 1)))
            if u.down and u.stride == 2 else None
        )
        self.relu = None if u.down else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            sc = self.proj(x) if self.proj is not None else x
            return torch.cat((sc, self.main(x)), dim=1)
        return self.relu(self.main(x) + x)


UNITS: dict[str, type[nn.Module]] = {"v1": V1Unit, "v2": V2Unit}


class Network(nn.Module):
    """stem (3x3 conv → BN → ReLU, optional 3x3 max-pool) → stages of units → optional 1x1 head
    conv → global average pool → fc, built from plain numbers and one UnitSpec per unit."""

    def __init__(
        self, in_channels: int, stem_channels: int, stem_stride: int, stem_pool: bool,
        stages: list[list[UnitSpec]], head: int, num_classes: int, fc_bias: bool,
    ) -> None:
        super().__init__()
        stem: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_channels, stem_channels, 3, stem_stride, 1, bias=False),
            bn=nn.BatchNorm2d(stem_channels),
            relu=nn.ReLU(),
        )
        if stem_pool:
            stem["pool"] = nn.MaxPool2d(3, 2, 1)
        self.stem = nn.Sequential(stem)
        self.stages = nn.ModuleList(
            nn.Sequential(*[UNITS[u.family](u) for u in units]) for units in stages
        )
        c = stages[-1][-1].c_out
        self.head = ConvBN(c, head) if head else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head or c, num_classes, bias=fc_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C0, H/4, W/4) with the paper's stem (conv stride 2 + pool)
        for stage in self.stages:
            x = stage(x)
        if self.head is not None:
            x = self.head(x)
        return x  # (B, C, h, w) before global pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))  # (B, classes)


class ShuffleNet(Network):
    """The network of an Arch (training form); ``num_classes`` overrides the Arch's."""

    def __init__(self, arch: Arch, num_classes: int | None = None) -> None:
        specs = unit_specs(arch)
        stages = [[u for u in specs if u.stage == i] for i in range(len(arch.stages))]
        super().__init__(arch.in_channels, arch.stem.channels, arch.stem.stride, arch.stem.pool,
                         stages, arch.head, num_classes or arch.num_classes, arch.fc_bias)
        self.arch = arch


# --- inference form -----------------------------------------------------------------------


class FoldedConv(nn.Module):
    """A conv whose BN has been folded into its weights and bias, with an optional ReLU."""

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        self.conv = conv
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x, inplace=True) if self.relu else x


def fold_conv_bn(m: nn.Module, out_perm: torch.Tensor | None = None) -> FoldedConv:
    """Fold eval-mode BN into the conv: w' = w·γ/σ, b' = β − μ·γ/σ. ``out_perm`` reorders the
    output channels (used to absorb a channel shuffle into the weights)."""
    conv, bn = m.conv, m.bn
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    b = bn.bias.detach() - bn.running_mean * scale
    if out_perm is not None:
        w, b = w[out_perm], b[out_perm]
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, groups=conv.groups, bias=True)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return FoldedConv(new, relu=hasattr(m, "relu"))


def shuffle_concat(a: torch.Tensor, b: torch.Tensor, nhwc: bool = False) -> torch.Tensor:
    """channel_shuffle(cat(a, b), 2) in one copy when a and b are equally wide: stacking on a
    new innermost axis writes a[i], b[i] next to each other, which is the shuffled order.
    ``nhwc`` writes the result in channels_last memory format."""
    if a.shape[1] != b.shape[1]:
        return channel_shuffle(torch.cat((a, b), dim=1), 2)
    if nhwc:
        # NHWC: channels are innermost, so interleave there and view back as NCHW.
        y = torch.stack((a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)), dim=-1)  # (B, H, W, C, 2)
        return y.flatten(-2).permute(0, 3, 1, 2)  # (B, 2C, H, W), channels_last strides
    return torch.stack((a, b), dim=2).flatten(1, 2)  # (B, 2C, H, W)


class V2UnitInference(nn.Module):
    """Folded V2 unit. When the next unit is a V2 basic unit with an even split, this one hands
    it the two halves its split would cut, each written contiguously by the merged
    concat-shuffle copy, so the next branch's 1x1 conv reads a dense tensor (no reorder)."""

    def __init__(self, unit: V2Unit, nhwc: bool) -> None:
        super().__init__()
        self.split_sizes = unit.split_sizes
        self.nhwc = nhwc
        self.emit_halves = False  # set by ShuffleNetInference, which knows the next unit
        self.proj = (
            nn.Sequential(fold_conv_bn(unit.proj.dw), fold_conv_bn(unit.proj.pw))
            if unit.proj is not None else None
        )
        self.main = nn.Sequential(*(fold_conv_bn(m) for m in unit.main))

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]):
        if self.proj is not None:
            a, b = self.proj(x), self.main(x)
        elif isinstance(x, tuple):
            a, b = x[0], self.main(x[1])
        else:
            ident, z = torch.split(x, self.split_sizes, dim=1)
            a, b = ident, self.main(z)
        if not self.emit_halves:
            return shuffle_concat(a, b, self.nhwc)
        # shuffle(cat(a, b)) is a0 b0 a1 b1 ...: its first half interleaves the first halves
        # of a and b, its second half the second halves.
        q = a.shape[1] // 2
        return (shuffle_concat(a[:, :q], b[:, :q], self.nhwc),
                shuffle_concat(a[:, q:], b[:, q:], self.nhwc))


class V1UnitInference(nn.Module):
    def __init__(self, unit: V1Unit) -> None:
        super().__init__()
        self.down = unit.down
        m = unit.main
        layers = [fold_conv_bn(m.pw1)]
        if hasattr(m, "shuffle"):
            if m.pw1.conv.groups == 1:
                # After an ungrouped 1x1 the shuffle is a mere reordering of its output
                # channels: absorb it into the weights. After a grouped one it is not.
                c = m.pw1.conv.out_channels
                idx = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1)
                layers = [fold_conv_bn(m.pw1, channel_shuffle(idx, m.shuffle.groups).view(-1).long())]
            else:
                layers.append(m.shuffle)
        self.main = nn.Sequential(*layers, fold_conv_bn(m.dw), fold_conv_bn(m.pw2))
        self.proj = unit.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            sc = self.proj(x) if self.proj is not None else x
            return torch.cat((sc, self.main(x)), dim=1)
        return F.relu(self.main(x) + x, inplace=True)


class ShuffleNetInference(nn.Module):
    def __init__(self, net: ShuffleNet, channels_last: bool = True) -> None:
        super().__init__()
        self.arch = net.arch
        self.channels_last = channels_last
        stem: list[nn.Module] = [fold_conv_bn(net.stem)]  # conv/bn/relu children, like a ConvBN
        if hasattr(net.stem, "pool"):
            stem.append(net.stem.pool)
        self.stem = nn.Sequential(*stem)
        units: list[list[nn.Module]] = [
            [V2UnitInference(u, channels_last) if isinstance(u, V2Unit) else V1UnitInference(u) for u in s]
            for s in net.stages
        ]
        flat = [u for s in units for u in s]
        for u, nxt in zip(flat, flat[1:]):
            if isinstance(u, V2UnitInference) and isinstance(nxt, V2UnitInference):
                out = u.main[-1].conv.out_channels
                u.emit_halves = (
                    nxt.proj is None and nxt.split_sizes[0] == nxt.split_sizes[1]
                    and out % 2 == 0 and 2 * out == sum(nxt.split_sizes)
                )
        self.stages = nn.ModuleList(nn.Sequential(*s) for s in units)
        self.head = fold_conv_bn(net.head) if net.head is not None else None
        self.fc = net.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        if self.head is not None:
            x = self.head(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))

