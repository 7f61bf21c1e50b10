import os
import stat

import pytest

from recoverlm import io
from recoverlm.io import atomic_dir, atomic_file, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_text_replaces_the_file_and_leaves_no_scratch(tmp_path):
    target = tmp_path / "out" / "a.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, binary=True) as fh:
            fh.write(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_outputs_get_the_permissions_open_would_give(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_UMASK", 0o022)
    write_text_atomic(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "model") as scratch:
        (scratch / "config.json").write_text("{}")
    assert _mode(tmp_path / "a.txt") == 0o644
    assert _mode(tmp_path / "model") == 0o755


def test_a_failed_folder_keeps_the_old_one(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as scratch:
            (scratch / "weights").write_text("new")
            raise RuntimeError("crash")
    assert (final / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_output_is_checked_for_writability_before_the_work(tmp_path, monkeypatch):
    import os

    import pytest

    from recoverlm.errors import RecoverLMError
    from recoverlm.io import check_output_dir, check_output_file

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RecoverLMError, match="which is a file"):
        check_output_file(tmp_path / "a-file" / "deeper" / "out.json", [])
    with pytest.raises(RecoverLMError, match="which is a file"):
        check_output_dir(tmp_path / "a-file" / "run", [], ())
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as on a read-only file system, even for root
    with pytest.raises(RecoverLMError, match="is not writable"):
        check_output_dir(tmp_path / "new" / "run", [], ())
    with pytest.raises(RecoverLMError, match="is not writable"):
        check_output_file(tmp_path / "out.json", [])


def test_a_folder_is_replaced_whole_even_when_another_writer_got_there_first(tmp_path):
    """A parallel writer of the same cache entry may finish while this one writes: the later
    complete folder replaces the earlier, nothing is left half-written or beside it."""
    from recoverlm.io import atomic_dir

    final = tmp_path / "entry"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("mine")
        final.mkdir()
        (final / "a.txt").write_text("theirs")  # the other writer finished meanwhile
    assert (final / "a.txt").read_text() == "mine"
    with atomic_dir(final) as tmp:  # and again, over our own
        (tmp / "a.txt").write_text("again")
    assert (final / "a.txt").read_text() == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
