"""Encryption at rest for files too large to hold in memory (resumable uploads of datasets
and code bundles): AES-256-GCM in fixed-size segments, with the dataset key
(services/datasets.py `_key`).

Layout: MAGIC, the key's id (4 bytes), the segment size (4 bytes), an 8-byte random nonce
prefix; then each segment's ciphertext and tag. Segment i's nonce is the prefix and i; its
associated data is the header, i and whether it is the last segment, so that segments
cannot be reordered, dropped or cut off at the end without failing their tag. Each segment is
checked before its plaintext is handed out.
"""

import hashlib
import secrets
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import MarketError

MAGIC = b"CMDS2\0"
SEGMENT = 1024 * 1024
TAG = 16
HEADER_LEN = len(MAGIC) + 4 + 4 + 8


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">Q?", index, last)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def seal_stream(src: BinaryIO, dst: BinaryIO, *, key: bytes, key_id: bytes) -> tuple[int, str]:
    """Encrypt `src` into `dst`; return the plaintext's size and SHA-256 (one pass)."""
    prefix = secrets.token_bytes(8)
    header = MAGIC + key_id + struct.pack(">I", SEGMENT) + prefix
    dst.write(header)
    aead, digest, size, index = AESGCM(key), hashlib.sha256(), 0, 0
    block = src.read(SEGMENT)
    while True:
        following = src.read(SEGMENT) if len(block) == SEGMENT else b""
        last = not following
        digest.update(block)
        size += len(block)
        dst.write(aead.encrypt(_nonce(prefix, index), block, _aad(header, index, last)))
        if last:
            return size, digest.hexdigest()
        block, index = following, index + 1


def is_sealed(head: bytes) -> bool:
    return head.startswith(MAGIC)


def _header(src: BinaryIO, key_id: bytes) -> tuple[bytes, int]:
    header = src.read(HEADER_LEN)
    if not header.startswith(MAGIC) or len(header) != HEADER_LEN:
        raise MarketError("This stored file is not in the segmented format.", code="dataset_damaged")
    if header[len(MAGIC):len(MAGIC) + 4] != key_id:
        raise MarketError("This file was encrypted with another DATASET_ENCRYPTION_KEY.",
                          code="dataset_key")
    (segment,) = struct.unpack(">I", header[len(MAGIC) + 4:len(MAGIC) + 8])
    return header, segment


def plaintext_size(src: BinaryIO, stored_size: int) -> int:
    """The plaintext's size, from the stored file's size and its header."""
    src.seek(len(MAGIC) + 4)
    (segment,) = struct.unpack(">I", src.read(4))
    src.seek(0)
    body = stored_size - HEADER_LEN
    segments = max(1, -(-body // (segment + TAG)))
    return body - segments * TAG


def unseal_stream(src: BinaryIO, *, key: bytes, key_id: bytes, start: int = 0) -> Iterator[bytes]:
    """The plaintext of a sealed file from byte `start` on, segment by segment, each
    checked before any of it is handed out (a range request starts mid-file)."""
    header, segment = _header(src, key_id)
    prefix = header[-8:]
    aead, index = AESGCM(key), start // segment
    skip = start - index * segment
    src.seek(HEADER_LEN + index * (segment + TAG))
    chunk = src.read(segment + TAG)
    while True:
        following = src.read(segment + TAG) if len(chunk) == segment + TAG else b""
        last = not following
        try:
            plain = aead.decrypt(_nonce(prefix, index), chunk, _aad(header, index, last))
        except InvalidTag:
            raise MarketError("This stored file is damaged (it fails its integrity check).",
                              code="dataset_damaged") from None
        yield plain[skip:] if skip else plain
        skip = 0
        if last:
            return
        chunk, index = following, index + 1
