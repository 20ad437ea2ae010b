"""Reads an offline W&B run folder's history steps back (tests only): the ``.wandb`` file is a LevelDB-style
log of protobuf records (32 KiB blocks, 7-byte record headers: checksum, length, type) after a 7-byte header."""
import struct
from pathlib import Path

BLOCK = 32768


def records(path: Path) -> list[bytes]:
    data, pos, out, partial = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # the block's padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            out.append(partial + chunk)
    return out


def history_steps(run_dir: Path) -> list[int]:
    """W&B's step of every history row of one offline run folder, in order."""
    from wandb.proto import wandb_internal_pb2 as pb
    [log] = list(run_dir.glob("*.wandb"))
    steps = []
    for raw in records(log):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            steps.append(rec.history.step.num)
    return steps
