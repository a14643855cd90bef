"""common/files.py: output folders and ``atomic_write``, the one way a file is replaced."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from shufflesearch.common import files as F
from shufflesearch.errors import UserError


def test_atomic_write_text_bytes_and_a_writer(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    assert F.atomic_write(p, "é\n") == p and p.read_bytes() == "é\n".encode()
    F.atomic_write(p, "é", encoding="latin-1")
    assert p.read_bytes() == b"\xe9"
    F.atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    seen: list[Path] = []

    def writer(tmp: Path) -> None:  # an exporter that wants a file name
        seen.append(tmp)
        tmp.write_text("from the writer")

    F.atomic_write(p, writer)
    assert p.read_text() == "from the writer"
    # written beside the target (one file system for os.replace), under the target's own name
    assert seen[0] != p and seen[0].name == p.name and seen[0].parent.parent == tmp_path
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]  # nothing left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("old")

    def dies(tmp: Path) -> None:
        tmp.write_text("half of the ne")
        raise KeyboardInterrupt  # a worker stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        F.atomic_write(p, dies)
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["config.yaml"]
    with pytest.raises(FileNotFoundError):  # a writer that wrote nothing replaces nothing
        F.atomic_write(p, lambda tmp: None)
    assert p.read_text() == "old"


def test_the_new_file_is_on_disk_before_it_replaces_the_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(F.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(F.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    F.atomic_write(tmp_path / "t.pt", b"weights")
    assert calls == ["fsync", "replace"]


def test_a_reader_never_sees_part_of_a_file(tmp_path: Path) -> None:
    # The control: a plain write_text truncates, then writes, and a reader in between sees a
    # part (or nothing); atomic_write's readers see one whole version or the other.
    p = tmp_path / "table.json"
    versions = ["a" * 2_000_000, "b" * 3_000_000]

    whole = {len(v) for v in versions}

    def race(write, writes: int) -> set[int]:  # type: ignore[no-untyped-def]
        """The sizes a reader saw while ``write`` replaced the file; stops at a torn read."""
        write(p, versions[0])
        stop, sizes = threading.Event(), set()

        def reader() -> None:
            while not stop.is_set():
                sizes.add(len(p.read_text()))

        t = threading.Thread(target=reader)
        t.start()
        for i in range(writes):
            if sizes - whole:
                break
            write(p, versions[i % 2])
        stop.set()
        t.join()
        return sizes

    assert race(F.atomic_write, 60) <= whole
    assert race(lambda path, text: path.write_text(text), 2000) - whole


def test_prepare_out_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        F.prepare_out_dir(tmp_path / "f")
    assert F.prepare_out_dir(tmp_path / "new" / "dir").is_dir()


def test_a_folder_that_cannot_be_made_is_named_in_the_callers_error(tmp_path: Path) -> None:
    class OutError(UserError):
        pass

    (tmp_path / "f").write_text("x")
    with pytest.raises(OutError, match=r"^out_dir .*f/sub: cannot write there \(") as e:
        F.prepare_out_dir(tmp_path / "f" / "sub", OutError)
    assert (e.value.field, e.value.value) == ("out_dir", tmp_path / "f" / "sub")  # the CLI: --out
    out = F.prepare_out_dir(tmp_path / "d")
    assert list(out.iterdir()) == []  # the write probe is gone
