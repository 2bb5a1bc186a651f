"""Zip archives as an attacker writes them: members edited in place, names repeated, a member that
inflates to gigabytes from a few megabytes (built in milliseconds: no zeros are ever compressed or hashed).
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Entries = list[tuple[str, bytes]]  # zip members in order, names without the archive's root folder


def read_zip(path: Path) -> tuple[str, Entries]:
    """The root folder (with its slash) and the members of a torch archive, names relative to the root."""
    return read_zip_bytes(path.read_bytes())


def read_zip_bytes(data: bytes) -> tuple[str, Entries]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        root = names[0].split("/", 1)[0] + "/"
        return root, [(n[len(root) :], archive.read(n)) for n in names]


def write_zip(path: Path, entries: Entries, root: str = "archive/") -> Path:
    """Members stored uncompressed, in this order, duplicates kept (``zipfile`` warns about them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": the point of some fixtures
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in entries:
                archive.writestr(root + name, data)
    return path


def edited(entries: Entries, changes: dict[str, Callable[[bytes], bytes]]) -> Entries:
    """``entries`` with some members' bytes replaced, by name."""
    missing = set(changes) - {n for n, _ in entries}
    assert not missing, missing
    return [(n, changes[n](d) if n in changes else d) for n, d in entries]


def json_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()

    return apply


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """zlib's ``crc32_combine``: the CRC-32 of A+B from those of A and B (``length2`` = len(B))."""
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while length2:
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
    return crc1 ^ crc2


@dataclass(frozen=True)
class Deflated:
    """A raw deflate stream with the CRC-32 and size of what it inflates to."""

    stream: bytes
    crc: int
    size: int


def zeros_bomb(size: int, chunk: int = 1 << 20) -> Deflated:
    """``size`` zero bytes (a multiple of ``chunk``) as a valid deflate stream of about size/1000 bytes.

    One chunk is compressed once and ended with a full flush (byte-aligned, no reference back past its
    start), so the stream is that block repeated, then an empty final block. The CRC is combined, not
    computed over the zeros.
    """
    assert size % chunk == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    count, crc, started = size // chunk, 0, False
    piece, piece_len = zlib.crc32(bytes(chunk)), chunk
    while count:  # binary expansion: piece is the CRC of piece_len zeros
        if count & 1:
            crc, started = (crc32_combine(crc, piece, piece_len) if started else piece), True
        piece, piece_len = crc32_combine(piece, piece, piece_len), piece_len * 2
        count >>= 1
    return Deflated(block * (size // chunk) + b"\x03\x00", crc, size)


def write_zip_by_hand(path: Path, entries: list[tuple[str, bytes | Deflated]], root: str) -> Path:
    """A zip written byte by byte: bytes stored, :class:`Deflated` members deflated, in this order,
    duplicates kept (sizes under 4 GiB: no zip64)."""
    local, central = bytearray(), bytearray()
    for name, data in entries:
        if isinstance(data, Deflated):
            assert data.size < 0xFFFFFFFF
            method, raw_data, crc, size = 8, data.stream, data.crc, data.size
        else:
            method, raw_data, crc, size = 0, data, zlib.crc32(data), len(data)
        raw = (root + name).encode()
        header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(raw_data), size, len(raw), 0)
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(raw_data),
                size,
                len(raw),
                0,
                0,
                0,
                0,
                0,
                len(local),
            )
            + raw
        )
        local += header + raw + raw_data
    count = len(entries)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path
