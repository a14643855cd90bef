"""What several commands print the same way."""

from __future__ import annotations

import json
from typing import Any


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def print_artefacts(res: Any) -> None:
    """One line per artefact of an ExportResult (shared by export and export-arch)."""
    for name, path in res.files.items():
        diff = res.max_abs_diff.get(name)
        note = f"verified, max abs diff {diff:.3g}" if diff is not None else "verified"
        if name == "model.int8.onnx":
            note += f", top-1 agreement with model.onnx {100 * res.int8['top1_agreement']:.1f}%"
        if name == "model.aoti.pt2":
            note += f", x{res.aoti['aoti_speedup']:.2f} the eager training form's speed"
        if name == "model.pte":
            note += f", x{res.executorch['latency_ratio']:.2f} torch's latency here"
        print(f"  {path.name:<11} {note}")
    for name, why in res.skipped.items():
        print(f"  {name:<11} skipped: {why}")
