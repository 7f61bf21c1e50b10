"""Atomic file and folder writes, so a crash never leaves a half-written artefact behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import RecoverLMError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which is not safe beside threads.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_file(path: Path, binary: bool = False) -> Iterator[IO]:
    """Yield a handle on a scratch file beside `path`; it replaces `path` only if the block succeeds.
    The result gets the permissions a plain open() would give, not the scratch file's owner-only ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            yield fh
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_output_dir(out: Path, inputs: Iterable[Path], own_files: Iterable[str]) -> None:
    """Refuse an output folder that would destroy something: one that is, contains or lies inside
    an input, or an existing folder holding files recoverlm did not write (its own outputs carry
    one of `own_files`, relative paths, and only those are replaced). An empty folder is fine."""
    target = Path(out).expanduser().resolve()
    for source in inputs:
        source = Path(source).expanduser().resolve()
        if target == source or source in target.parents or target in source.parents:
            where = "is" if target == source else "lies inside" if source in target.parents else "contains"
            raise RecoverLMError(f"output {out} {where} the input {source}; choose another output folder")
    if target.exists() and not target.is_dir():
        raise RecoverLMError(f"output {out} is a file, not a folder")
    if target.is_dir() and any(target.iterdir()) and not any((target / f).exists() for f in own_files):
        raise RecoverLMError(f"output {out} already holds files that recoverlm did not write; "
                             "choose a new or empty folder")
    _check_writable(out, target.parent)


def _check_writable(out: Path, folder: Path) -> None:
    """Before the work, not after it: the nearest existing folder on the way must take new files."""
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise RecoverLMError(f"output {out} lies under {folder}, which is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RecoverLMError(f"output {out}: {folder} is not writable")


def check_output_file(out: Path, inputs: Iterable[Path | str | None]) -> None:
    """Refuse, before any work, an output file that cannot be written where asked: a folder, a
    path under a file, or a place inside (or equal to) an input, which outputs never touch."""
    target = Path(out).expanduser().resolve()
    if target.is_dir():
        raise RecoverLMError(f"output {out} is a folder; name a file to write")
    _check_writable(out, target.parent)
    for source in inputs:
        if source is None or not Path(source).expanduser().exists():
            continue  # an embedded model's name, or nothing
        source = Path(source).expanduser().resolve()
        if target == source or source in target.parents:
            raise RecoverLMError(f"output {out} {'is' if target == source else 'lies inside'} the input {source}; "
                                 "write it somewhere else")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `final`; it becomes `final` only if the block succeeds.

    An existing `final` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    os.chmod(scratch, 0o777 & ~_UMASK)
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        try:
            os.replace(scratch, final)  # nothing there yet (replacing an empty folder too)
            return
        except OSError:
            if not final.exists():
                raise
        # A folder is there (ours from before, or one a parallel writer of the same cache entry just
        # finished): moved aside under a fresh name, so no stale name from an earlier crash is in the way.
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old)
        try:
            os.replace(scratch, final)
        except BaseException:
            if not final.exists():  # interrupted between the two renames: the previous one goes back
                os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
