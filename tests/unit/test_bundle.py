"""Job bundles: pack a folder on the client, check and unpack it on the server."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import struct
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgpu.domain.bundle import (
    DEFAULT_EXCLUDES,
    MAX_BUNDLE_BYTES,
    MAX_FILES,
    MAX_UNCOMPRESSED_BYTES,
    BundleInfo,
    content_hash,
    pack_dir,
    unpack,
)
from fastgpu.errors import InvalidRequest

MiB = 1024 * 1024


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def in_thread(fn: Callable[[], object], timeout: float = 10.0) -> BaseException | None:
    """Run ``fn`` in a daemon thread; fail the test if it has not returned by ``timeout``."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"blocked for more than {timeout} s"
    return outcome[0]


TREE = {
    "train.py": b"print('hello')\n",
    "pkg/__init__.py": b"",
    "pkg/model.py": b"import torch\n" * 100,
    "pkg/deep/er/weights.bin": bytes(range(256)) * 64,
    "conf/caf\u00e9 \u65e5\u672c.yaml": b"lr: 0.1\n",
    "empty.txt": b"",
}


# --------------------------------------------------------------------------------------------
# Round trip and determinism


def test_defaults_are_the_documented_limits() -> None:
    limits = (MAX_BUNDLE_BYTES, MAX_UNCOMPRESSED_BYTES, MAX_FILES)
    assert limits == (20 * MiB, 100 * MiB, 5000)
    excludes = DEFAULT_EXCLUDES
    assert excludes == ("__pycache__", ".git", "*.pyc")


def test_round_trip_reproduces_the_tree(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", TREE)
    data = pack_dir(src, MAX_BUNDLE_BYTES)

    info = unpack(data, tmp_path / "dest", MAX_UNCOMPRESSED_BYTES, MAX_FILES)

    assert read_tree(tmp_path / "dest") == TREE
    assert info == BundleInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        files=len(TREE),
        uncompressed_bytes=sum(len(v) for v in TREE.values()),
        compressed_bytes=len(data),
    )


def test_same_tree_gives_same_bytes_whatever_the_times_and_modes(tmp_path: Path) -> None:
    first = make_tree(tmp_path / "a", TREE)
    second = make_tree(tmp_path / "b", dict(reversed(TREE.items())))
    os.utime(second / "train.py", (1_000_000_000, 1_000_000_000))
    os.chmod(second / "train.py", 0o755)

    data = pack_dir(first, MAX_BUNDLE_BYTES)

    assert pack_dir(first, MAX_BUNDLE_BYTES) == data
    assert pack_dir(second, MAX_BUNDLE_BYTES) == data
    assert content_hash(pack_dir(second, MAX_BUNDLE_BYTES)) == content_hash(data)
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == sorted(TREE)


def test_repacking_an_unpacked_bundle_gives_the_same_bytes(tmp_path: Path) -> None:
    data = pack_dir(make_tree(tmp_path / "src", TREE), MAX_BUNDLE_BYTES)
    unpack(data, tmp_path / "dest", MAX_UNCOMPRESSED_BYTES, MAX_FILES)
    assert pack_dir(tmp_path / "dest", MAX_BUNDLE_BYTES) == data


def test_content_hash_is_sha256_hex() -> None:
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(content_hash(b"")) == 64


def test_unpacked_files_are_private(tmp_path: Path) -> None:
    data = pack_dir(make_tree(tmp_path / "src", TREE), MAX_BUNDLE_BYTES)
    dest = tmp_path / "dest"
    unpack(data, dest, MAX_UNCOMPRESSED_BYTES, MAX_FILES)
    for path in [dest, *dest.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_unpack_refuses_an_existing_dest_and_leaves_it_alone(tmp_path: Path) -> None:
    data = pack_dir(make_tree(tmp_path / "src", TREE), MAX_BUNDLE_BYTES)
    dest = make_tree(tmp_path / "dest", {"keep.txt": b"mine"})
    with pytest.raises(FileExistsError):
        unpack(data, dest, MAX_UNCOMPRESSED_BYTES, MAX_FILES)
    assert read_tree(dest) == {"keep.txt": b"mine"}


# --------------------------------------------------------------------------------------------
# Packing: what is skipped and what is refused


def test_default_excludes_are_skipped(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {
            "main.py": b"x",
            "main.pyc": b"x",
            "__pycache__/main.cpython-311.pyc": b"x",
            ".git/HEAD": b"ref",
            "pkg/__pycache__/m.pyc": b"x",
            ".gitignore": b"data/\n",
        },
    )
    names = zipfile.ZipFile(io.BytesIO(pack_dir(src, MAX_BUNDLE_BYTES))).namelist()
    assert names == [".gitignore", "main.py"]


def test_excludes_match_names_and_relative_paths(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {"main.py": b"x", "data/a.bin": b"x", "ckpt/model.pt": b"x", "main.pyc": b"x"},
    )
    data = pack_dir(src, MAX_BUNDLE_BYTES, excludes=(*DEFAULT_EXCLUDES, "data", "ckpt/*.pt"))
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["main.py"]


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="not a folder"):
        pack_dir(tmp_path / "missing", MAX_BUNDLE_BYTES)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.py": b"x"})
    os.mkfifo(src / "pipe")

    error = in_thread(lambda: pack_dir(src, MAX_BUNDLE_BYTES))

    assert isinstance(error, InvalidRequest)
    assert "pipe: is a FIFO" in error.message


def test_symlink_to_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.py": b"x"})
    os.mkfifo(src / "pipe")
    (src / "link").symlink_to("pipe")

    error = in_thread(lambda: pack_dir(src, MAX_BUNDLE_BYTES, excludes=["pipe"]))

    assert isinstance(error, InvalidRequest)
    assert "link: is a FIFO" in error.message


def test_socket_is_refused(tmp_path: Path) -> None:
    # AF_UNIX paths are short (108 bytes): bind in a short temporary folder
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        src = make_tree(Path(short), {"a.py": b"x"})
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(src / "s"))
            with pytest.raises(InvalidRequest, match="s: is a socket"):
                pack_dir(src, MAX_BUNDLE_BYTES)


@pytest.mark.parametrize("target", ["/etc", "/etc/passwd", "../outside.txt"])
def test_symlink_leading_outside_is_refused(tmp_path: Path, target: str) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    src = make_tree(tmp_path / "src", {"a.py": b"x"})
    (src / "link").symlink_to(target)
    with pytest.raises(InvalidRequest, match=r"link: symlink to .* leads outside"):
        pack_dir(src, MAX_BUNDLE_BYTES)


def test_symlink_to_a_file_inside_travels_as_a_copy(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"conf/base.yaml": b"lr: 1"})
    (src / "current.yaml").symlink_to("conf/base.yaml")
    data = pack_dir(src, MAX_BUNDLE_BYTES)
    unpack(data, tmp_path / "dest", MAX_UNCOMPRESSED_BYTES, MAX_FILES)
    assert not (tmp_path / "dest" / "current.yaml").is_symlink()
    assert read_tree(tmp_path / "dest") == {"conf/base.yaml": b"lr: 1", "current.yaml": b"lr: 1"}


@pytest.mark.parametrize(
    ("make_link", "rule"),
    [
        (lambda src: (src / "loop").symlink_to("."), "symlink to a folder"),
        (lambda src: (src / "dangling").symlink_to("nowhere"), "broken symlink"),
    ],
)
def test_other_symlinks_are_refused(
    tmp_path: Path, make_link: Callable[[Path], None], rule: str
) -> None:
    src = make_tree(tmp_path / "src", {"a.py": b"x"})
    make_link(src)
    with pytest.raises(InvalidRequest, match=rule):
        pack_dir(src, MAX_BUNDLE_BYTES)


def test_names_the_server_would_refuse_are_refused_when_packing(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a\\b.txt": b"x"})
    with pytest.raises(InvalidRequest, match="backslashes"):
        pack_dir(src, MAX_BUNDLE_BYTES)


# --------------------------------------------------------------------------------------------
# Packing: limits stop early


def test_huge_tree_stops_at_the_walk_without_reading(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.py": b"x"})
    with open(src / "huge.bin", "wb") as f:
        f.truncate(64 * 1024**3)  # sparse: 64 GiB declared, nothing on disk
    started = time.monotonic()

    with pytest.raises(InvalidRequest) as caught:
        pack_dir(src, MAX_BUNDLE_BYTES)

    assert time.monotonic() - started < 5
    message = caught.value.message
    assert "100 MiB limit on uncompressed size" in message
    assert "stopped at huge.bin" in message
    assert "exclude" in message
    assert "storage" in message


def test_compressed_limit_stops_at_the_first_file_over_it(tmp_path: Path) -> None:
    noise = os.urandom(2 * MiB)  # incompressible
    src = make_tree(tmp_path / "src", {"a.bin": noise, "b.bin": noise, "c.bin": noise})

    with pytest.raises(InvalidRequest) as caught:
        pack_dir(src, 1 * MiB)

    assert "1 MiB limit on compressed size (stopped at a.bin)" in caught.value.message


def test_uncompressed_limit_applies_to_compressible_files(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"zeros.bin": bytes(3 * MiB)})
    with pytest.raises(InvalidRequest, match="2 MiB limit on uncompressed size"):
        pack_dir(src, MAX_BUNDLE_BYTES, max_uncompressed=2 * MiB)


def test_file_count_limit(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {f"f{i}.txt": b"x" for i in range(6)})
    with pytest.raises(InvalidRequest, match="more than 5 files"):
        pack_dir(src, MAX_BUNDLE_BYTES, max_files=5)
    assert (
        len(zipfile.ZipFile(io.BytesIO(pack_dir(src, MAX_BUNDLE_BYTES, max_files=6))).namelist())
        == 6
    )


def test_folder_count_limit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(6):
        (src / f"d{i}").mkdir(parents=True)
    with pytest.raises(InvalidRequest, match="more than 5 folders"):
        pack_dir(src, MAX_BUNDLE_BYTES, max_files=5)


# --------------------------------------------------------------------------------------------
# Unpacking hostile zips: each refused, nothing left in dest


def zip_of(*entries: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names; we want one
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, content in entries:
                zf.writestr(name, content)
    return buf.getvalue()


def symlink_entry(name: str, create_system: int = 3) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = create_system
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def fifo_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


def lying_bomb(real_size: int, declared: int) -> bytes:
    """A deflated member of ``real_size`` zeros whose headers say it holds ``declared`` bytes."""
    data = bytearray(zip_of(("ok.txt", b"fine"), ("bomb.bin", bytes(real_size))))
    crc = zlib.crc32(bytes(declared))  # a CRC that agrees with the lie
    for sig, crc_at, size_at, name_at in ((b"PK\x03\x04", 14, 22, 30), (b"PK\x01\x02", 16, 24, 46)):
        pos = data.find(sig)
        while pos >= 0:
            if data[pos + name_at : pos + name_at + 8] == b"bomb.bin":
                struct.pack_into("<L", data, pos + crc_at, crc)
                struct.pack_into("<L", data, pos + size_at, declared)
            pos = data.find(sig, pos + 1)
    return bytes(data)


def overlapping_zip() -> bytes:
    """Entry ``b`` lives inside the stored data of entry ``a`` (a 'better zip bomb')."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("b", b"payload")
        b_info = zf.getinfo("b")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a", inner.getvalue())
        a_info = zf.getinfo("a")
        b_info.header_offset = a_info.header_offset + 30 + len("a")  # inside a's data
        zf.filelist.append(b_info)
    return buf.getvalue()


HOSTILE: list[tuple[str, bytes, str]] = [
    ("traversal", zip_of(("ok.txt", b"x"), ("../x", b"x")), "'..' path components"),
    (
        "deep traversal",
        zip_of(("a/../../x", b"x")),
        "'..' path components",
    ),
    (
        "absolute",
        zip_of(("/etc/x", b"x")),
        "absolute names",
    ),
    (
        "drive letter",
        zip_of(("C:/Windows/x", b"x")),
        "drive letters",
    ),
    (
        "backslash",
        zip_of(("..\\..\\x", b"x")),
        "backslashes",
    ),
    (
        "control character",
        zip_of(("a\nb", b"x")),
        "control characters",
    ),
    (
        "empty component",
        zip_of(("a//b", b"x")),
        "empty, '.' and '..'",
    ),
    (
        "dot component",
        zip_of(("./a", b"x")),
        "empty, '.' and '..'",
    ),
    (
        "long component",
        zip_of(("x" * 256, b"x")),
        "limited to 255 bytes",
    ),
    ("symlink entry", zip_of(("ok.txt", b"x"), (symlink_entry("link"), b"/etc/passwd")), "symlink"),
    (
        "symlink from dos",
        zip_of((symlink_entry("link", create_system=0), b"/etc")),
        "symlink",
    ),
    (
        "fifo entry",
        zip_of((fifo_entry("pipe"), b"")),
        "special-file",
    ),
    ("duplicate", zip_of(("a.txt", b"one"), ("a.txt", b"two")), "duplicate name"),
    ("duplicate folder", zip_of(("d/", b""), ("d/", b"")), "duplicate name"),
    ("file and folder", zip_of(("a", b"x"), ("a/b", b"y")), "both a file and a folder"),
    ("lying bomb", lying_bomb(8 * MiB, 16), "inflates past the size its header declares"),
    ("lying short", lying_bomb(16, 64), "shorter than the size its header declares"),
    ("honest bomb", zip_of(("ok.txt", b"x"), ("big.bin", bytes(3 * MiB))), "more than 2 MiB"),
    ("overlap", overlapping_zip(), "overlaps the data of another entry"),
    ("not a zip", b"#!/bin/sh\nrm -rf /\n", "not a valid zip"),
    ("empty bytes", b"", "not a valid zip"),
]


@pytest.mark.parametrize(
    ("data", "rule"), [(d, r) for _, d, r in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_zip_is_refused_and_leaves_nothing(tmp_path: Path, data: bytes, rule: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(InvalidRequest, match="bundle") as caught:
        unpack(data, dest, 2 * MiB, 100)
    assert rule in caught.value.message
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_refusal_names_the_entry(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as caught:
        unpack(zip_of(("ok.txt", b"x"), ("../x", b"x")), tmp_path / "d", MiB, 10)
    assert caught.value.message.startswith("bundle entry '../x': ")


def test_lying_bomb_inflates_no_more_than_its_header_said(tmp_path: Path) -> None:
    # 256 MiB of zeros deflates to about 256 KiB; the header says 16 bytes
    data = lying_bomb(256 * MiB, 16)
    assert len(data) < MiB
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="inflates past"):
        unpack(data, tmp_path / "dest", 2 * MiB, 100)
    assert time.monotonic() - started < 2
    assert not (tmp_path / "dest").exists()


def test_entry_count_limit(tmp_path: Path) -> None:
    data = zip_of(*[(f"f{i}", b"") for i in range(11)])
    with pytest.raises(InvalidRequest, match="has 11 entries; at most 10"):
        unpack(data, tmp_path / "dest", MiB, 10)
    assert not (tmp_path / "dest").exists()


def test_compressed_size_limit(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="limit on compressed size"):
        unpack(
            zip_of(("a", os.urandom(4096))),
            tmp_path / "dest",
            MiB,
            10,
            max_bytes=1024,
        )


def test_encrypted_entry_is_refused(tmp_path: Path) -> None:
    data = bytearray(zip_of(("a.txt", b"x")))
    for sig, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = data.find(sig)
        data[pos + flags_at] |= 0x1
    with pytest.raises(InvalidRequest, match="encrypted"):
        unpack(bytes(data), tmp_path / "dest", MiB, 10)


def test_explicit_folders_are_created(tmp_path: Path) -> None:
    info = unpack(zip_of(("empty/", b""), ("a/b.txt", b"x")), tmp_path / "d", MiB, 10)
    assert (tmp_path / "d" / "empty").is_dir()
    assert info.files == 1


# --------------------------------------------------------------------------------------------
# Properties

component = (
    st.text(alphabet=st.sampled_from("abcXYZ019_-. \u00e9\u00df\u65e5"), min_size=1, max_size=10)
    .filter(lambda s: s not in (".", "..") and not s.startswith("."))
    .filter(lambda s: s != "__pycache__" and not s.endswith(".pyc"))
)
trees = st.dictionaries(
    keys=st.lists(component, min_size=1, max_size=3).map("/".join),
    values=st.binary(max_size=300),
    max_size=8,
).filter(lambda t: not any(other.startswith(name + "/") for name in t for other in t))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees)
def test_unpack_of_pack_reproduces_any_small_tree(tree: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = make_tree(Path(tmp) / "src", tree)
        data = pack_dir(src, MAX_BUNDLE_BYTES)
        info = unpack(data, Path(tmp) / "dest", MAX_UNCOMPRESSED_BYTES, MAX_FILES)
        assert read_tree(Path(tmp) / "dest") == tree
        assert info.files == len(tree)
        assert pack_dir(src, MAX_BUNDLE_BYTES) == data


SAMPLE = zip_of(("a.txt", b"hello " * 50), ("d/b.bin", bytes(range(200))), ("c", b""))


@settings(max_examples=150, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(1, 255)), max_size=4))
def test_corrupted_bundles_are_refused_cleanly_or_unpack(flips: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLE)
    for pos, xor in flips:
        data[pos] ^= xor
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "dest"
        try:
            info = unpack(bytes(data), dest, MiB, 10)
        except InvalidRequest:
            assert not dest.exists()
        else:
            assert info.files == len(read_tree(dest))
