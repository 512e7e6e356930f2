"""Read back what W&B stored for an offline run (``run-<id>.wandb``), without a server.

The file is W&B's record log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then 32 KiB
blocks of records, each with a 7-byte header (CRC-32, little-endian length, type: 1 full,
2 first, 3 middle, 4 last) and a ``wandb_internal_pb2.Record`` protobuf as payload."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            out.append(pending + payload)
        elif kind == 0 and length == 0:  # zero padding to the block's end
            pos += BLOCK - pos % BLOCK
    return out


def history(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``wandb.log`` step of the offline run in ``run_dir`` (``.../wandb/offline-run-*``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = run_dir.glob("run-*.wandb")
    rows = []
    for payload in records(log):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
    return rows
