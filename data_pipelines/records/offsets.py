"""Where each record of a shard lies in the file, so a bucket read fetches exactly that record.

ArrayRecord files are Riegeli files: the file is cut into 64 KiB blocks, each starting with a
24-byte block header, and the chunks (one record each, uncompressed, as `writing` writes them)
run through the blocks' remaining bytes. Removing the block headers leaves the *logical* stream,
in which every record's bytes are contiguous. `locate` finds each record in the logical stream
right after a shard is written (in write order, by content) and `writing` stores the
(logical start, length) pairs beside the shard (`<shard>.offsets.npy`). A reader maps a pair to
the physical byte span (`physical_span`), fetches that span with one bounded range request and
drops the block headers inside it (`strip_headers`).

Why not array-record's own GCS reader: it asks for `bytes=<start>-` (to the end of the file)
for every random read and resets the connection after its 1 MiB buffer, so each 30 kB frame
costs a new connection and up to megabytes on the wire (measured against a local GCS server,
docs/data.md#reading-from-a-bucket). Tests check every record read this way against
`ArrayRecordReader`.
"""

from typing import BinaryIO

import numpy as np
from array_record.python import array_record_module

BLOCK_SIZE = 1 << 16  # Riegeli's block size.
BLOCK_HEADER = 24     # Riegeli's block header: header_hash, previous_chunk, next_chunk.
_PAYLOAD = BLOCK_SIZE - BLOCK_HEADER


def physical(logical: int) -> int:
  """File position of logical byte `logical` (the block headers skipped)."""
  block, within = divmod(logical, _PAYLOAD)
  return block * BLOCK_SIZE + BLOCK_HEADER + within


def physical_span(start: int, length: int) -> tuple[int, int]:
  """[begin, end) of the file bytes holding logical bytes [start, start + length)."""
  return physical(start), physical(start + length - 1) + 1


def strip_headers(data: bytes, begin: int) -> bytes:
  """`data`, read from file position `begin`, without the block headers it contains."""
  end = begin + len(data)
  first = (begin // BLOCK_SIZE + 1) * BLOCK_SIZE  # The first block boundary after `begin`.
  if first >= end:
    return data
  parts, pos = [data[:first - begin]], first
  while pos < end:
    parts.append(data[pos + BLOCK_HEADER - begin:min(pos + BLOCK_SIZE, end) - begin])
    pos += BLOCK_SIZE
  return b"".join(parts)


class _LogicalStream:
  """A shard file read block by block with the block headers removed, searchable forward."""

  def __init__(self, f: BinaryIO):
    self._f = f
    self._buffer = bytearray()
    self._base = 0  # Logical position of _buffer[0].

  def _more(self) -> bool:
    block = self._f.read(BLOCK_SIZE)
    self._buffer += block[BLOCK_HEADER:]
    return bool(block)

  def find(self, record: bytes) -> int:
    """Logical start of the next occurrence of `record`; drops everything before its end."""
    while True:
      i = self._buffer.find(record)
      if i >= 0:
        start = self._base + i
        del self._buffer[:i + len(record)]
        self._base = start + len(record)
        return start
      if not self._more():
        raise ValueError("record not found in the shard file (not an uncompressed ArrayRecord "
                         "file written with group_size:1?)")


def locate(path: str) -> np.ndarray:
  """int64 [num_records, 2]: (logical start, length) of every record of local shard `path`."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    n = reader.num_records()
    out = np.empty((n, 2), np.int64)
    with open(path, "rb") as f:
      stream = _LogicalStream(f)
      for i in range(n):
        record = reader.read()
        out[i] = stream.find(record), len(record)
  finally:
    reader.close()
  return out
