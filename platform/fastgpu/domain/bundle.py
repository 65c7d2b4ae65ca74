"""Job bundles: a job's working directory as a zip that travels through the API.

The server never reads a path a tenant names. The client packs its folder into a bundle with
:func:`pack_dir`; the server checks the bytes and writes them into a folder of its own choosing
with :func:`unpack`. This module is pure: standard library only, no Ray, no HTTP.

Vocabulary
    bundle      the zip bytes; ``content_hash`` (sha256 hex) names it.
    entry       one member of the zip; its name is a relative POSIX path.
    limits      ``max_bytes`` (compressed size of the bundle), ``max_uncompressed`` (sum of the
                entries' sizes) and ``max_files`` (number of entries).

Default limits: :data:`MAX_BUNDLE_BYTES` = 20 MiB compressed, :data:`MAX_UNCOMPRESSED_BYTES` =
100 MiB uncompressed, :data:`MAX_FILES` = 5,000 entries. Data sets and checkpoints belong in the
tenant's storage, not in the bundle.

Packing (client side) rules
    * Only regular files travel; empty folders and file modes do not (every file is 0o644 in
      the zip, written 0600 by the server): run scripts as ``python x.py`` or ``bash x.sh``.
    * ``DEFAULT_EXCLUDES`` (``__pycache__``, ``.git``, ``*.pyc``) are skipped; a pattern matches
      an entry's name or its relative path (``fnmatch``, case-sensitive). Passing ``excludes``
      replaces the defaults: add to them with ``(*DEFAULT_EXCLUDES, "data")``.
    * A symlink to a regular file inside the folder travels as a copy of that file; a symlink
      that leads outside the folder, to a folder, or nowhere is refused.
    * A FIFO, socket or device is refused without being opened (files are opened non-blocking
      and checked again with ``fstat``, so a file swapped for a FIFO cannot block either).
    * The limits stop the walk as soon as they are passed: never a whole huge tree first
      (folders walked count against ``max_files`` too, files' sizes are summed from ``stat``
      before any is read, and the compressed size is checked after every chunk).
    * Names follow the server's rules below, so whatever packs also unpacks.
    * Output is deterministic: entries sorted by name, fixed timestamps and modes, so equal
      trees give equal bytes (with the same zlib) and so an equal :func:`content_hash`.

Unpacking (server side) rules, all checked before anything is written
    * the bytes are a zip of at most ``max_bytes``, not encrypted, stored or deflated only;
    * names: relative (no leading ``/``, no drive letter such as ``C:``), no backslash, no NUL
      or control character, no empty, ``.`` or ``..`` component, at most 1,024 bytes with
      components of at most 255; no two entries with the same name, no name that is both a
      file and a folder; each local header names the same entry as the central directory;
    * no symlink or special-file entries (the Unix type in ``external_attr``, whatever
      ``create_system`` claims);
    * no two entries whose bytes overlap (overlapping entries make the densest zip bombs);
    * at most ``max_files`` entries, and the sizes the headers declare add up to at most
      ``max_uncompressed``.
    Headers can lie, so extraction inflates each entry itself and refuses one that produces
    more than it declared, less than it declared, or bytes whose CRC-32 does not match; the
    running total is enforced too. Files are written 0600 and folders 0700 into ``dest``,
    which must not exist yet. On any refusal everything written is removed and
    :class:`~fastgpu.errors.InvalidRequest` names the entry and the rule it broke.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import itertools
import os
import re
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastgpu.errors import InvalidRequest

MiB = 1024 * 1024

MAX_BUNDLE_BYTES = 20 * MiB
"""Default limit on the compressed size of a bundle (the zip bytes)."""

MAX_UNCOMPRESSED_BYTES = 100 * MiB
"""Default limit on the sum of the sizes of a bundle's files once unpacked."""

MAX_FILES = 5_000
"""Default limit on the number of entries in a bundle."""

DEFAULT_EXCLUDES: tuple[str, ...] = ("__pycache__", ".git", "*.pyc")
"""Patterns :func:`pack_dir` skips unless told otherwise."""

MAX_NAME_COMPONENT_BYTES = 255  # NAME_MAX on Linux and macOS
MAX_NAME_BYTES = 1024

_CHUNK = 1 * MiB
_FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip header can say
_FILE_ATTR = (stat.S_IFREG | 0o644) << 16
_UNIX = 3  # ZipInfo.create_system for Unix: external_attr's high word is st_mode
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_SHRINK_HINT = (
    "exclude what the job does not need (data sets, checkpoints, virtual environments) or put "
    "data in the tenant's storage and read it from the job"
)


@dataclass(frozen=True)
class BundleInfo:
    """What :func:`unpack` wrote."""

    sha256: str
    """:func:`content_hash` of the zip bytes."""
    files: int
    """Number of regular files written (folders not counted)."""
    uncompressed_bytes: int
    """Sum of the sizes of the files written."""
    compressed_bytes: int
    """Size of the zip bytes."""


def content_hash(data: bytes) -> str:
    """The sha256 of a bundle, as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def _name_problem(name: str) -> str | None:
    """Why ``name`` (a file's relative POSIX path, no trailing slash) may not be in a bundle."""
    if not name:
        return "an empty name is not allowed"
    if name.startswith("/"):
        return "absolute names are not allowed"
    if _DRIVE.match(name):
        return "drive letters are not allowed"
    if "\\" in name:
        return "backslashes are not allowed in names"
    if _CONTROL.search(name):
        return "NUL and control characters are not allowed in names"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "names must be valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"names are limited to {MAX_NAME_BYTES} bytes"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return "empty, '.' and '..' path components are not allowed"
        if len(part.encode("utf-8")) > MAX_NAME_COMPONENT_BYTES:
            return f"path components are limited to {MAX_NAME_COMPONENT_BYTES} bytes"
    return None


# --------------------------------------------------------------------------------------------
# Client side


def _excluded(name: str, rel: str, excludes: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(rel, p) for p in excludes)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _collect(
    root: Path, excludes: tuple[str, ...], max_uncompressed: int, max_files: int
) -> list[tuple[str, str]]:
    """(archive name, path to read) of every file to pack; refuses as soon as a rule breaks.

    Only metadata is read here (``lstat``, ``stat``, ``readlink``); nothing is opened.
    """
    real_root = os.path.realpath(root)
    found: list[tuple[str, str]] = []
    declared = 0
    folders = 0
    stack = [("", str(root))]
    while stack:
        prefix, folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError as exc:
            where = prefix.rstrip("/") or "."
            raise InvalidRequest(f"{where}: cannot list the folder ({exc.strerror})") from exc
        for entry in entries:
            rel = prefix + entry.name
            if _excluded(entry.name, rel, excludes):
                continue
            problem = _name_problem(rel)
            if problem is not None:
                raise InvalidRequest(f"{rel!r}: {problem}; rename the file or exclude it")
            try:
                st = entry.stat(follow_symlinks=False)
                source = entry.path
                if stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(entry.path)
                    if not _inside(target, real_root):
                        raise InvalidRequest(
                            f"{rel}: symlink to {os.readlink(entry.path)!r} leads outside the "
                            "working directory; copy the file in or exclude the link"
                        )
                    try:
                        st = os.stat(target)
                    except OSError as exc:
                        raise InvalidRequest(
                            f"{rel}: broken symlink ({exc.strerror}); remove it or exclude it"
                        ) from exc
                    if stat.S_ISDIR(st.st_mode):
                        raise InvalidRequest(
                            f"{rel}: symlink to a folder; replace it with the folder or exclude it"
                        )
                    source = target
                elif stat.S_ISDIR(st.st_mode):
                    folders += 1
                    if folders > max_files:
                        raise InvalidRequest(
                            f"working directory has more than {max_files} folders (stopped at "
                            f"{rel}); " + _SHRINK_HINT
                        )
                    stack.append((rel + "/", entry.path))
                    continue
            except OSError as exc:
                raise InvalidRequest(f"{rel}: cannot read ({exc.strerror})") from exc
            if not stat.S_ISREG(st.st_mode):
                raise InvalidRequest(
                    f"{rel}: is {_kind(st.st_mode)}; only regular files can be uploaded, exclude it"
                )
            found.append((rel, source))
            declared += st.st_size
            if len(found) > max_files:
                raise InvalidRequest(
                    f"working directory has more than {max_files} files (stopped at {rel}); "
                    + _SHRINK_HINT
                )
            if declared > max_uncompressed:
                raise InvalidRequest(
                    f"working directory is over the {_size(max_uncompressed)} limit on "
                    f"uncompressed size (stopped at {rel}); " + _SHRINK_HINT
                )
    found.sort()
    return found


def _size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n} bytes"


def _open_regular(rel: str, path: str) -> int:
    """Open ``path`` for reading without blocking or following a last-moment symlink."""
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InvalidRequest(f"{rel}: cannot read ({exc.strerror})") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InvalidRequest(
            f"{rel}: is {_kind(mode)}; only regular files can be uploaded, exclude it"
        )
    return fd


def pack_dir(
    path: Path,
    max_bytes: int = MAX_BUNDLE_BYTES,
    excludes: Iterable[str] = DEFAULT_EXCLUDES,
    *,
    max_uncompressed: int = MAX_UNCOMPRESSED_BYTES,
    max_files: int = MAX_FILES,
) -> bytes:
    """Zip the regular files under ``path`` into deterministic bundle bytes.

    Raises :class:`InvalidRequest` naming the file for anything that may not travel (see the
    module docstring), and as soon as the bundle passes ``max_bytes`` compressed,
    ``max_uncompressed`` uncompressed or ``max_files`` files.
    """
    root = Path(path)
    if not root.is_dir():
        raise InvalidRequest(f"working directory {str(root)!r}: not a folder")
    files = _collect(root, tuple(excludes), max_uncompressed, max_files)

    def too_big(rel: str) -> InvalidRequest:
        return InvalidRequest(
            f"working directory is over the {_size(max_bytes)} limit on compressed size "
            f"(stopped at {rel}); " + _SHRINK_HINT
        )

    def too_much(rel: str) -> InvalidRequest:
        return InvalidRequest(
            f"working directory is over the {_size(max_uncompressed)} limit on uncompressed "
            f"size (stopped at {rel}, which grew while it was read); " + _SHRINK_HINT
        )

    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, source in files:
            fd = _open_regular(rel, source)
            with os.fdopen(fd, "rb") as src:
                info = zipfile.ZipInfo(rel, date_time=_FIXED_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = _UNIX
                info.external_attr = _FILE_ATTR
                info.file_size = os.fstat(fd).st_size  # only decides zip64; rewritten on close
                with zf.open(info, "w") as dst:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > max_uncompressed:
                            raise too_much(rel)
                        dst.write(chunk)
                        if buf.tell() > max_bytes:
                            raise too_big(rel)
            if buf.tell() > max_bytes:
                raise too_big(rel)
    data = buf.getvalue()
    if len(data) > max_bytes:
        raise too_big(files[-1][0] if files else "the end of the zip")
    return data


# --------------------------------------------------------------------------------------------
# Server side


def _refuse(name: str, rule: str) -> InvalidRequest:
    return InvalidRequest(f"bundle entry {name!r}: {rule}")


def _plan(
    data: bytes, zf: zipfile.ZipFile, max_uncompressed: int, max_files: int
) -> tuple[list[str], list[zipfile.ZipInfo]]:
    """Check every entry without writing; return the folders to create and the files to write."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise InvalidRequest(f"bundle: has {len(infos)} entries; at most {max_files} are allowed")
    files: dict[str, zipfile.ZipInfo] = {}
    dirs: set[str] = set()  # named by an entry or implied by a file's path
    named_dirs: set[str] = set()
    spans: list[tuple[int, int, str]] = []  # (local header offset, end of data, name)
    declared = 0
    for info in infos:
        raw = info.orig_filename  # zipfile cuts ``filename`` at a NUL; judge what was sent
        is_dir = raw.endswith("/")
        name = raw[:-1] if is_dir else raw
        problem = _name_problem(name)
        if problem is not None:
            raise _refuse(raw, problem)
        if info.flag_bits & 0x1:
            raise _refuse(raw, "encrypted entries are not allowed")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(raw, "only stored and deflated entries are allowed")
        # judged whatever create_system claims: an extractor may trust the bits anyway
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise _refuse(raw, "symlink entries are not allowed")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _refuse(raw, "special-file entries are not allowed")
        if (kind == stat.S_IFDIR) != is_dir and kind != 0:
            raise _refuse(raw, "the entry's type and its name (trailing '/') disagree")
        if name in files or name in named_dirs:
            raise _refuse(raw, "duplicate name")
        spans.append((info.header_offset, _data_start(data, info) + info.compress_size, raw))
        parts = name.split("/")
        parents = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if is_dir:
            named_dirs.add(name)
            dirs.add(name)
        else:
            declared += info.file_size
            if declared > max_uncompressed:
                raise _refuse(
                    raw,
                    f"the bundle's files add up to more than {_size(max_uncompressed)} "
                    "uncompressed",
                )
            files[name] = info
        dirs |= parents
    spans.sort()
    for (_, end, _), (offset, _, raw) in itertools.pairwise(spans):
        if offset < end:
            raise _refuse(raw, "overlaps the data of another entry")
    clash = sorted(dirs & files.keys())
    if clash:
        raise _refuse(clash[0], "is both a file and a folder")
    return sorted(dirs, key=lambda d: (d.count("/"), d)), [files[n] for n in sorted(files)]


def _data_start(data: bytes, info: zipfile.ZipInfo) -> int:
    """Offset of an entry's compressed bytes, after its local header."""
    offset = info.header_offset
    if offset < 0 or offset + _LOCAL_HEADER.size > len(data):
        raise _refuse(info.orig_filename, "its local header lies outside the zip")
    fields = _LOCAL_HEADER.unpack_from(data, offset)
    if fields[0] != _LOCAL_SIGNATURE:
        raise _refuse(info.orig_filename, "bad local header signature")
    name_len, extra_len = fields[9], fields[10]
    local_name = data[offset + _LOCAL_HEADER.size : offset + _LOCAL_HEADER.size + name_len]
    if local_name != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"):
        raise _refuse(info.orig_filename, "local header and central directory names differ")
    start = offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + info.compress_size > len(data):
        raise _refuse(info.orig_filename, "its data runs past the end of the zip")
    return start


def _inflate(data: bytes, info: zipfile.ZipInfo, out: io.BufferedWriter, budget: int) -> int:
    """Write one entry's bytes to ``out``, never more than its header declared or ``budget``.

    Returns the number of bytes written.
    """
    name = info.orig_filename
    start = _data_start(data, info)
    raw = memoryview(data)[start : start + info.compress_size]
    limit = min(info.file_size, budget)
    written = 0
    crc = 0

    def emit(chunk: bytes) -> None:
        nonlocal written, crc
        written += len(chunk)
        if written > limit:
            rule = (
                "inflates past the size its header declares"
                if written > info.file_size
                else "the bundle's files add up to more than the uncompressed limit"
            )
            raise _refuse(name, rule)
        crc = zlib.crc32(chunk, crc)
        out.write(chunk)

    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise _refuse(name, "stored entry whose sizes disagree")
        for pos in range(0, len(raw), _CHUNK):
            emit(bytes(raw[pos : pos + _CHUNK]))
    else:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            for pos in range(0, len(raw), _CHUNK):
                pending = bytes(raw[pos : pos + _CHUNK])
                while pending:
                    # max_length keeps a bomb's output to one chunk per call
                    emit(inflater.decompress(pending, _CHUNK))
                    pending = inflater.unconsumed_tail
            while not inflater.eof:
                chunk = inflater.decompress(b"", _CHUNK)
                if not chunk:
                    break
                emit(chunk)
        except zlib.error as exc:
            raise _refuse(name, f"corrupt deflate data ({exc})") from exc
        if not inflater.eof or inflater.unused_data:
            raise _refuse(name, "deflate data is truncated or followed by garbage")
    if written != info.file_size:
        raise _refuse(name, "is shorter than the size its header declares")
    if crc != info.CRC:
        raise _refuse(name, "CRC-32 does not match its contents")
    return written


def unpack(
    data: bytes,
    dest: Path,
    max_uncompressed: int = MAX_UNCOMPRESSED_BYTES,
    max_files: int = MAX_FILES,
    *,
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> BundleInfo:
    """Check the bundle ``data`` and write its files into the new folder ``dest``.

    ``dest`` is chosen by the server and must not exist yet (its parent must); a
    :class:`FileExistsError` says the caller reused one. Any rule broken by the bundle raises
    :class:`InvalidRequest` naming the entry and the rule, and leaves no ``dest`` behind.
    """
    if len(data) > max_bytes:
        raise InvalidRequest(
            f"bundle: {len(data)} bytes is over the {_size(max_bytes)} limit on compressed size"
        )
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    # zipfile raises many types on bad bytes (fuzzing found NotImplementedError for a forged
    # version field); whatever it is, the tenant sent a bad zip
    except Exception as exc:
        raise InvalidRequest(f"bundle: not a valid zip file ({exc})") from exc
    with zf:
        dirs, files = _plan(data, zf, max_uncompressed, max_files)
    dest = Path(dest)
    os.mkdir(dest, 0o700)
    try:
        os.chmod(dest, 0o700)
        for d in dirs:
            path = dest / d
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)
        total = 0
        flags = (
            os.O_WRONLY
            | os.O_CREAT
            | os.O_EXCL
            | getattr(os, "O_NOFOLLOW", 0)
            | getattr(os, "O_CLOEXEC", 0)
            | getattr(os, "O_BINARY", 0)
        )
        for info in files:
            fd = os.open(dest / info.orig_filename, flags, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                total += _inflate(data, info, out, max_uncompressed - total)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return BundleInfo(
        sha256=content_hash(data),
        files=len(files),
        uncompressed_bytes=total,
        compressed_bytes=len(data),
    )
