"""Stable 64-bit keys of external ids, computed for a whole batch at once (no per-id Python).

The key of an id is a hash of its UTF-8 bytes, the same in every process, on every machine and
in any language that implements it, so a source (a decoder process, a producer) can hash ids
before they reach the trainer and the frequency estimator agrees with the vocabulary without
sharing state. The function, named ``stk1`` in saved states (:data:`KEY_FUNCTION`), is xxHash64's
8-byte round applied to the zero-padded little-endian 64-bit words of the bytes, seeded with the
byte length (so ``"a"`` and ``"a\\0"`` differ), then xxHash64's avalanche::

    h = P5 + len(b)
    for each 8-byte word w of b (the last one zero-padded):
        h ^= rotl64(w * P2, 31) * P1
        h  = rotl64(h, 27) * P1 + P4
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32        (all mod 2^64)

and the key is ``h`` read as a signed int64. It is *not* xxHash64 itself (whose tail rounds differ);
:func:`reference_key` is the plain-Python definition the tests hold the vectorised one to.
Vectorised, each word is a dozen numpy operations over the batch, so the cost is per batch and per
word of the longest id, not per id.

Until checkpoint format 2 the key was blake2b (8 bytes) of the UTF-8 bytes, one ``hashlib`` call
per id; see :mod:`streamtrain.vocab.vocabulary` for how older states are migrated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KEY_FUNCTION", "EncodedIds", "KeyedIds", "encode_ids", "id_keys", "keys_of_encoded", "reference_key"]

KEY_FUNCTION = "stk1"

_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5
_M64 = (1 << 64) - 1


def _rotl_py(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def reference_key(item_id: str | bytes) -> int:
    """The key of one id in plain Python: the definition, slow; tests compare :func:`id_keys` to it."""
    data = item_id.encode("utf-8") if isinstance(item_id, str) else bytes(item_id)
    h = (_P5 + len(data)) & _M64
    for start in range(0, len(data), 8):
        word = int.from_bytes(data[start : start + 8].ljust(8, b"\0"), "little")
        h ^= (_rotl_py((word * _P2) & _M64, 31) * _P1) & _M64
        h = (_rotl_py(h, 27) * _P1 + _P4) & _M64
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    h ^= h >> 32
    return h - (1 << 64) if h >= 1 << 63 else h


@dataclass(frozen=True)
class EncodedIds:
    """UTF-8 bytes of a batch of ids: id ``i`` is ``data[starts[i] : starts[i] + lengths[i]]``.

    ``data`` (total + 8,) uint8 ends with 8 zero bytes so every 8-byte load inside it is in bounds.
    """

    data: np.ndarray  # (total + 8,) uint8
    starts: np.ndarray  # (n,) int64
    lengths: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.starts)

    def take(self, positions: np.ndarray) -> EncodedIds:
        """The ids at ``positions`` (k,), re-packed contiguously (for storing a few new ids)."""
        starts, lengths = self.starts[positions], self.lengths[positions]
        if not len(positions):
            return EncodedIds(np.zeros(8, dtype=np.uint8), starts, lengths)
        new_starts = np.cumsum(lengths) - lengths
        src = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - new_starts, lengths)
        return EncodedIds(np.concatenate([self.data[src], np.zeros(8, np.uint8)]), new_starts, lengths)

    def decode(self) -> list[str]:
        """The ids as ``str`` again (per id; for the few a vocabulary stores or serves)."""
        raw = self.data.tobytes()
        return [raw[s : s + n].decode("utf-8") for s, n in zip(self.starts.tolist(), self.lengths.tolist())]


@dataclass(frozen=True)
class KeyedIds:
    """An id column as a source ships it: stable keys plus the ids' UTF-8 bytes (no ``str`` objects).

    The ingest processes build it (:mod:`streamtrain.worker.slots`) so that the trainer process never
    touches an id as a Python object: :meth:`IdVocabulary.lookup` takes the keys as they are and reads
    the bytes only of the few ids it admits. Slices are views.
    """

    keys: np.ndarray  # (n,) int64, keys_of_encoded(encoded)
    encoded: EncodedIds

    def __len__(self) -> int:
        return len(self.keys)

    def slice(self, start: int, stop: int) -> KeyedIds:
        window = slice(start, stop)
        enc = self.encoded
        return KeyedIds(self.keys[window], EncodedIds(enc.data, enc.starts[window], enc.lengths[window]))

    def to_strings(self) -> np.ndarray:
        """(n,) object array of ``str`` (per id: for tests and the rare mixed concatenation)."""
        out = np.empty(len(self), dtype=object)
        out[:] = self.encoded.decode()
        return out

    @classmethod
    def of(cls, ids: Sequence[str] | np.ndarray) -> KeyedIds:
        """Keys and bytes of ``ids`` (vectorised, as the ingest processes compute them)."""
        enc = encode_ids(ids)
        return cls(keys_of_encoded(enc), enc)

    @classmethod
    def concat(cls, parts: Sequence[KeyedIds]) -> KeyedIds:
        """Join columns in order; the bytes are re-packed into one arena (vectorised)."""
        if len(parts) == 1:
            return parts[0]
        packed = [p.encoded.take(np.arange(len(p), dtype=np.int64)) for p in parts]
        sizes = [int(e.lengths.sum()) for e in packed]
        shift = np.cumsum([0, *sizes[:-1]])
        data = np.concatenate([e.data[:n] for e, n in zip(packed, sizes)] + [np.zeros(8, np.uint8)])
        starts = np.concatenate([e.starts + s for e, s in zip(packed, shift)])
        lengths = np.concatenate([e.lengths for e in packed])
        return cls(np.concatenate([p.keys for p in parts]), EncodedIds(data, starts, lengths))


def encode_ids(ids: Sequence[str] | np.ndarray) -> EncodedIds:
    """The UTF-8 bytes of ``ids``: a sequence or object/str array of ``str`` (or ``bytes``, taken
    as UTF-8 already), or a fixed-width ``S`` array (whose trailing NUL bytes are padding).

    The common all-ASCII case costs one ``join`` and one ``encode`` for the whole batch; a batch
    with a non-ASCII id falls back to encoding each id (still no Python-level hashing).
    """
    arr = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=object)
    n = len(arr)
    pad = np.zeros(8, dtype=np.uint8)
    if n == 0:
        return EncodedIds(pad, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if arr.dtype.kind == "S":
        width = arr.dtype.itemsize
        data = np.concatenate([np.ascontiguousarray(arr).view(np.uint8).reshape(-1), pad])
        return EncodedIds(data, np.arange(n, dtype=np.int64) * width, np.char.str_len(arr).astype(np.int64))
    if arr.dtype.kind == "U":
        arr = arr.astype(object)
    if isinstance(arr[0], bytes):
        parts: list[bytes] = list(arr)
        blob = b"".join(parts)
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=n)
    else:
        text = "".join(arr.tolist())  # TypeError here if an id is not a str
        blob = text.encode("utf-8")
        if len(blob) == len(text):  # all ASCII: byte length == character length
            lengths = np.fromiter(map(len, arr), dtype=np.int64, count=n)
        else:
            parts = [s.encode("utf-8") for s in arr]
            blob = b"".join(parts)
            lengths = np.fromiter(map(len, parts), dtype=np.int64, count=n)
    data = np.concatenate([np.frombuffer(blob, dtype=np.uint8), pad])
    return EncodedIds(data, np.cumsum(lengths) - lengths, lengths)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def keys_of_encoded(enc: EncodedIds) -> np.ndarray:
    """(n,) int64 keys of ids given as :func:`encode_ids` returns them (or a source builds them)."""
    n = len(enc)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    data = np.ascontiguousarray(enc.data, dtype=np.uint8)
    # An unaligned little-endian uint64 at every byte offset: word i of id j is one gather.
    at = np.ndarray(shape=(data.size - 7,), dtype="<u8", buffer=data, strides=(1,))
    lengths = enc.lengths
    nwords = (lengths + 7) // 8  # (n,)
    p1, p2, p3, p4 = np.uint64(_P1), np.uint64(_P2), np.uint64(_P3), np.uint64(_P4)
    with np.errstate(over="ignore"):
        h = lengths.astype(np.uint64) + np.uint64(_P5)  # (n,)
        for i in range(int(nwords.max())):
            left = lengths - 8 * i  # bytes of this id from word i on
            word = at[np.minimum(enc.starts + 8 * i, data.size - 8)]  # (n,)
            # Zero the bytes past the id's end (the next id's bytes): keep min(left, 8) low bytes.
            keep = np.clip(left, 0, 8).astype(np.uint64) * np.uint64(8)
            word &= np.where(keep >= 64, ~np.uint64(0), (np.uint64(1) << (keep & np.uint64(63))) - np.uint64(1))
            k = _rotl(word * p2, 31) * p1
            stepped = _rotl(h ^ k, 27) * p1 + p4
            h = np.where(left > 0, stepped, h)
        h ^= h >> np.uint64(33)
        h *= p2
        h ^= h >> np.uint64(29)
        h *= p3
        h ^= h >> np.uint64(32)
    return h.view(np.int64)


def id_keys(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """(n,) int64 stable keys of ``ids`` (see the module docstring); vectorised over the batch."""
    return keys_of_encoded(encode_ids(ids))
