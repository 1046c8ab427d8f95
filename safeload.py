"""Reading the pickles a checkpoint or a data folder holds without running code. Plain pickle.load calls whatever
function a file names, so a crafted file runs a command when it is read. torch.load(weights_only=True) guards
ckpt.pt and best.pt; this module guards the rest: a sharded checkpoint's DCP metadata and the non-tensor values in
its shards, and nanoGPT's meta.pkl. Its unpickler builds only the classes on an allow-list and refuses any other
name in one line.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
from typing import Any

import torch

# what torch.distributed.checkpoint's .metadata file names: its own dataclasses, torch's sizes, dtypes and
# layouts, and paths
DCP_METADATA = frozenset(
    [("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")]
    + [("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
       ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")]
    + [(module, name) for module in ("pathlib", "pathlib._local")
       for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")])


class Refused(pickle.UnpicklingError):
    """A pickle named something off the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that finds only the (module, name) pairs in `allowed`, and torch's dtypes; plain data (numbers,
    strings, bytes, lists, tuples, dicts, sets) needs no names at all."""

    def __init__(self, file: io.BufferedIOBase, allowed: frozenset[tuple[str, str]]) -> None:
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                              torch.dtype)):
            return super().find_class(module, name)
        raise Refused(f"it names {module}.{name}, which a file of this kind never holds (it could run code)")


def loads(data: bytes, allowed: frozenset[tuple[str, str]] = frozenset()) -> Any:
    """The object pickled in data, built only from plain data and the allowed classes; Refused otherwise."""
    return RestrictedUnpickler(io.BytesIO(data), allowed).load()


def dcp_reader(path: str, metadata: Any) -> Any:
    """A torch.distributed.checkpoint storage reader for the checkpoint directory at path that hands DCP the
    metadata dcp_metadata read (read once, without running code) and reads its non-tensor values with
    torch.load(weights_only=True)."""
    reader = _reader_class()(path)
    reader.checked_metadata = metadata
    return reader


def dcp_metadata(path: str) -> Any:
    """The torch.distributed.checkpoint Metadata of the checkpoint directory at path; Refused if its .metadata
    names anything else, OSError if it cannot be read."""
    from torch.distributed.checkpoint.metadata import Metadata

    with open(os.path.join(path, ".metadata"), "rb") as f:
        metadata = loads(f.read(), DCP_METADATA)
    if not isinstance(metadata, Metadata):
        raise Refused(f"its .metadata holds a {type(metadata).__name__}, not DCP's Metadata")
    return metadata


@functools.cache
def _reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader  # here: DCP takes a second to import
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class PlainReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            metadata = self.checked_metadata
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            return super().read_data(plan, PlainBytes(planner))

    return PlainReader


class PlainBytes:
    """A load planner as the one given, but each non-tensor value it is handed is read with
    torch.load(weights_only=True) first (DCP's planners read them with weights_only=False): what reaches the
    planner is then plain data, pickled again."""

    def __init__(self, planner: Any) -> None:
        self.planner = planner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.planner, name)

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            data = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:  # torch's refusal of a name, many lines long
            raise Refused(f"its value {read_item.dest_index.fqn} is not plain data "
                          f"({str(e).strip().splitlines()[-1]})") from None
        plain = io.BytesIO()
        torch.save(data, plain)
        plain.seek(0)
        self.planner.load_bytes(read_item, plain)
