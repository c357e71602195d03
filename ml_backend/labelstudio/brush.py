"""Label Studio brush RLE, encoded with numpy.

Label Studio stores a brush mask as a bit stream over the mask's RGBA bytes: a 32-bit length, the
5-bit word size minus one, four 4-bit run-length field widths minus one (3, 4, 8, 16), then one
record per run — a series flag, a 2-bit width index, the run length minus one in that width, and the
8-bit value — padded with zeros to whole bytes (a full zero byte when already aligned).
`label_studio_sdk.converter.brush.mask2rle` writes the same bytes but builds the stream as a
Python string, one run at a time: seconds per mask on a noisy full-resolution mask. This encoder
packs every record at once (a bincount per byte of the records: no per-bit arrays) and is
tested byte for byte against the SDK.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
RUN_WIDTHS = (3, 4, 8, 16)
LONGEST_RUN = 2**16
CHANNELS = 4


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Boolean or uint8 (H, W) mask → Label Studio brush RLE (opaque 255 where the mask is set)."""
    values = _as_flat_bool(mask)
    lengths, run_values = _runs(values)
    run_values = run_values.astype(np.int64) * 255
    lengths, run_values = _split_long_runs(lengths * CHANNELS, run_values)
    header_codes = [values.size * CHANNELS, WORD_BITS - 1, *(width - 1 for width in RUN_WIDTHS)]
    header_widths = [32, 5, *([4] * len(RUN_WIDTHS))]
    codes, widths = _run_records(lengths, run_values)
    return _pack(np.concatenate([header_codes, codes]), np.concatenate([header_widths, widths])).tolist()


def _as_flat_bool(mask: np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    if array.dtype == np.bool_:
        return array.ravel()  # a view for the usual C-ordered mask
    return array.ravel() > 0


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=values.dtype)
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths.astype(np.int64), values[ends]


def _split_long_runs(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs longer than 2**16 become full 2**16 records followed by the remainder (as the SDK does)."""
    if not (lengths > LONGEST_RUN).any():
        return lengths, values
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


def _pack(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate each code's `width` low bits, most significant first, into bytes, then pad with zero
    bits to the next whole byte (a full zero byte when already aligned), as the SDK does.

    Each code (at most 32 bits) lands in a 64-bit big-endian window starting at its first byte; codes
    never share a bit, so summing every window's bytes into place is the same as OR-ing them.
    """
    widths = widths.astype(np.int64)
    ends = np.cumsum(widths)
    starts = ends - widths
    size = int(ends[-1]) // WORD_BITS + 1
    shifts = (64 - starts % WORD_BITS - widths).astype(np.uint64)
    windows = (codes.astype(np.uint64) << shifts).astype(">u8").view(np.uint8).reshape(-1, 8)
    first_byte = starts // WORD_BITS
    packed = np.zeros(size + 8, dtype=np.float64)
    for offset in range(5):  # 32 bits starting anywhere in a byte span at most 5 bytes
        packed += np.bincount(first_byte + offset, weights=windows[:, offset], minlength=size + 8)
    return packed[:size].astype(np.uint8)
