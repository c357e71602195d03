"""Label Studio brush RLE, encoded with numpy.

Label Studio stores a brush mask as a bit stream over the mask's RGBA bytes: a 32-bit length, the
5-bit word size minus one, four 4-bit run-length field widths minus one (3, 4, 8, 16), then one
record per run — a series flag, a 2-bit width index, the run length minus one in that width, and the
8-bit value — padded with zeros to whole bytes (a full zero byte when already aligned).
`label_studio_sdk.converter.brush.mask2rle` writes the same bytes but builds the stream as a
Python string, one run at a time: seconds per mask on a noisy full-resolution mask. This encoder
packs every record at once and is tested byte for byte against the SDK.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
RUN_WIDTHS = (3, 4, 8, 16)
LONGEST_RUN = 2**16
CHANNELS = 4


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Boolean or uint8 (H, W) mask → Label Studio brush RLE (opaque 255 where the mask is set)."""
    values = np.asarray(mask).ravel() > 0
    lengths, run_values = _runs(values)
    run_values = run_values.astype(np.int64) * 255
    lengths, run_values = _split_long_runs(lengths * CHANNELS, run_values)
    header_codes = [values.size * CHANNELS, WORD_BITS - 1, *(width - 1 for width in RUN_WIDTHS)]
    header_widths = [32, 5, *([4] * len(RUN_WIDTHS))]
    codes, widths = _run_records(lengths, run_values)
    bits = _to_bits(np.concatenate([header_codes, codes]), np.concatenate([header_widths, widths]))
    padding = WORD_BITS - bits.size % WORD_BITS
    bits = np.concatenate([bits, np.zeros(padding, dtype=np.uint8)])
    return np.packbits(bits).astype(int).tolist()


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=values.dtype)
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths.astype(np.int64), values[ends]


def _split_long_runs(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs longer than 2**16 become full 2**16 records followed by the remainder (as the SDK does)."""
    pieces = np.maximum(1, -(-lengths // LONGEST_RUN))
    repeated_lengths = np.repeat(lengths, pieces)
    repeated_values = np.repeat(values, pieces)
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    position = np.arange(repeated_lengths.size) - first
    last = position == np.repeat(pieces, pieces) - 1
    split = np.where(last, repeated_lengths - LONGEST_RUN * position, LONGEST_RUN)
    return split, repeated_values


def _run_records(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.searchsorted(np.array([2**w for w in RUN_WIDTHS]), lengths)  # smallest width that fits
    run_bits = np.array(RUN_WIDTHS)[index]
    series = (lengths > 1).astype(np.int64)
    index = np.where(series == 1, index, 0)
    run_bits = np.where(series == 1, run_bits, RUN_WIDTHS[0])
    codes = (series << (2 + run_bits + WORD_BITS)) | (index << (run_bits + WORD_BITS))
    codes |= (lengths - 1) << WORD_BITS
    codes |= values
    return codes, 1 + 2 + run_bits + WORD_BITS


def _to_bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate each code's `width` low bits, most significant first (every width is at most 32)."""
    bit_rows = np.unpackbits(codes.astype(">u4").view(np.uint8).reshape(-1, 4), axis=1)
    keep = np.arange(32) >= (32 - widths.astype(np.int64))[:, None]
    return bit_rows[keep]
