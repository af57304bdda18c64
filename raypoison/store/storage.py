"""Where results live: a local folder or an object-store URI, through pyarrow file systems.

Writes are atomic for readers: on a local file system a file is written under a hidden temporary
name (``.name.tmp``) and renamed; object stores make an object visible only once it is complete.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from raypoison.errors import ResultsError


@dataclass(frozen=True)
class Location:
    fs: pafs.FileSystem
    root: str  # path inside ``fs``
    uri: str

    @classmethod
    def parse(cls, uri: str) -> Location:
        if "://" in uri:
            fs, root = pafs.FileSystem.from_uri(uri)
        else:
            fs, root = pafs.LocalFileSystem(), posixpath.abspath(uri)
        return cls(fs, root.rstrip("/") or "/", uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        """A path inside ``fs`` (for this location's file system)."""
        return posixpath.join(self.root, *parts)

    def child_uri(self, *parts: str) -> str:
        """A URI for a sub-location, keeping the URI's options (``?endpoint_override=…``)."""
        if self.is_local:
            return self.join(*parts)
        split = urlsplit(self.uri)
        return urlunsplit(split._replace(path=posixpath.join(split.path, *parts)))

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` so that no reader ever sees a partial file: locally, a temporary file
        synced to disk before it is renamed into place, so a power loss or kernel crash leaves
        the old file or the new one, never an empty one under the final name."""
        folder, name = posixpath.split(path)
        self.fs.create_dir(folder, recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk, say: leave no temporary file behind
            with contextlib.suppress(Exception):
                self.fs.delete_file(tmp)
            raise

    def list_dirs(self, path: str) -> list[pafs.FileInfo]:
        """The folders directly inside ``path`` (none if it does not exist)."""
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted((i for i in infos if i.type == pafs.FileType.Directory),
                      key=lambda i: i.base_name)

    def list_tree(self, path: str) -> list[pafs.FileInfo]:
        """The files and folders under folder ``path``, at any depth; none if it does not exist."""
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type == pafs.FileType.File:
            raise ResultsError(f"{path} is a file where a folder was expected")
        return list(self.fs.get_file_info(pafs.FileSelector(path, recursive=True)))

    def list_files(self, path: str) -> list[pafs.FileInfo]:
        """The files under folder ``path``, at any depth; none if it does not exist."""
        return [i for i in self.list_tree(path) if i.type == pafs.FileType.File]
