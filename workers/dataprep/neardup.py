"""Near-duplicate detection: MinHash over character n-grams with LSH banding, in numpy.

Character n-grams (not words) so that Chinese and other unspaced scripts work. numpy rather than
`datasketch`: the shingle hashing and the minimum over all permutations are vectorised, and the
kept state per row is one uint32 signature plus one dict entry per band.
"""

from __future__ import annotations

import re

import numpy as np

_SPACES = re.compile(r"\s+")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_CHUNK = 4096  # shingles per block when taking minima: bounds memory for very long documents


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A good 64-bit mixer, so that similar code point sequences get unrelated shingle hashes."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingles(text: str, n: int) -> np.ndarray:
    """Distinct hashed character n-grams of the text (lower-cased, whitespace collapsed)."""
    text = _SPACES.sub(" ", text.lower()).strip()
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if codes.size == 0:
        return np.zeros(1, dtype=np.uint64)
    if codes.size <= n:
        n = int(codes.size)
    count = codes.size - n + 1
    with np.errstate(over="ignore"):
        hashed = np.zeros(count, dtype=np.uint64)
        for k in range(n):  # polynomial rolling hash over n code points, wrapping mod 2**64
            hashed = hashed * np.uint64(1_000_003) + codes[k : k + count]
        return np.unique(_splitmix64(hashed))


def _optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positives below and false negatives above the threshold
    (the same criterion as datasketch's MinHashLSH, integrated numerically)."""
    best, best_error = (1, num_perm), float("inf")
    below = np.linspace(0.0, threshold, 200)
    above = np.linspace(threshold, 1.0, 200)
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        fp = np.trapezoid(1 - (1 - below**rows) ** bands, below)
        fn = np.trapezoid((1 - above**rows) ** bands, above)
        error = float(0.5 * fp + 0.5 * fn)
        if error < best_error:
            best, best_error = (bands, rows), error
    return best


class NearDuplicateIndex:
    """Streaming near-duplicate filter: `is_duplicate(text)` answers and remembers new texts."""

    def __init__(self, *, threshold: float, num_perm: int, ngram: int, seed: int) -> None:
        self.threshold = threshold
        self.ngram = ngram
        rng = np.random.default_rng(seed)
        # Multiply-add hashing mod 2**64 with odd multipliers: one permutation per signature slot.
        self._a = (rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | 1
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.bands, self.rows = _optimal_bands(threshold, num_perm)
        self._buckets: list[dict[bytes, int]] = [{} for _ in range(self.bands)]
        self._signatures: list[np.ndarray] = []

    def signature(self, text: str) -> np.ndarray:
        values = shingles(text, self.ngram)
        result = np.full(self._a.size, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, values.size, _CHUNK):
                block = values[start : start + _CHUNK]
                hashed = self._a[:, None] * block[None, :] + self._b[:, None]
                np.minimum(result, hashed.min(axis=1), out=result)
        # The high 32 bits are plenty to estimate similarity and halve what is kept per row.
        return (result >> np.uint64(32)).astype(np.uint32)

    def is_duplicate(self, text: str) -> bool:
        signature = self.signature(text)
        keys = [
            signature[band * self.rows : (band + 1) * self.rows].tobytes()
            for band in range(self.bands)
        ]
        checked: set[int] = set()
        for band, key in enumerate(keys):
            candidate = self._buckets[band].get(key)
            if candidate is None or candidate in checked:
                continue
            checked.add(candidate)
            similarity = float(np.mean(self._signatures[candidate] == signature))
            if similarity >= self.threshold:
                return True
        index = len(self._signatures)
        self._signatures.append(signature)
        for band, key in enumerate(keys):
            self._buckets[band].setdefault(key, index)
        return False
