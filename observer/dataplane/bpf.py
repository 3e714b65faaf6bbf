"""The ``bpf(2)`` system call, from Python: what reading (and, for the lab and the tests,
writing) pinned BPF maps takes — no ``bpftool``, no libbpf.

``union bpf_attr`` is laid out per command as ``include/uapi/linux/bpf.h`` defines it (Linux
6.x; every field used here dates from 5.6 or earlier, ``BPF_MAP_LOOKUP_BATCH`` being the newest).
Errors are ``OSError`` with the kernel's errno: ``ENOENT`` (nothing pinned there), ``EACCES`` /
``EPERM`` (file permission, or ``kernel.unprivileged_bpf_disabled`` without ``CAP_BPF``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from typing import NamedTuple

_SYSCALL = {"x86_64": 321, "aarch64": 280, "arm64": 280}  # __NR_bpf, <asm/unistd.h>
_MAP_CREATE, _LOOKUP, _UPDATE, _DELETE = 0, 1, 2, 3
_OBJ_PIN, _OBJ_GET, _GET_INFO, _LOOKUP_BATCH = 6, 7, 15, 24
F_RDONLY = 1 << 3  # BPF_F_RDONLY: file_flags of BPF_OBJ_GET
MAP_TYPE_HASH = 1
_ATTR_SIZE = 128  # room for every command's attributes; the kernel checks the tail is zero
_ELEM = struct.Struct("=I4xQQQ")  # map_fd, key, value, flags
_OBJ = struct.Struct("=QII")  # pathname, bpf_fd, file_flags
_INFO_REQ = struct.Struct("=IIQ")  # bpf_fd, info_len, info
_INFO = struct.Struct("=IIIIII16s")  # type, id, key_size, value_size, max_entries, flags, name
_BATCH = struct.Struct("=QQQQIIQQ")  # in_batch, out_batch, keys, values, count, map_fd, ...
_BATCH_COUNT = 32  # offset of ``count``: the kernel writes back how many it copied

_libc = ctypes.CDLL(None, use_errno=True)
# The same libc, called without releasing the GIL: a lookup takes about a microsecond, and a
# thread that releases the GIL for it waits up to the switch interval (5 ms) to take it back
# from a thread decoding a full read.
_syscall_held = ctypes.PyDLL(None, use_errno=True).syscall
_syscall_held.restype = ctypes.c_long


class MapInfo(NamedTuple):
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str  # the kernel's copy, cut to 15 characters


def _number() -> int:
    number = _SYSCALL.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) is not wired for {platform.machine()}")
    return number


def _bpf(command: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    result = int(_libc.syscall(_number(), command, attr, _ATTR_SIZE))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _attr(layout: struct.Struct, *values: int) -> ctypes.Array[ctypes.c_char]:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    layout.pack_into(attr, 0, *values)
    return attr


def obj_get(path: str, *, read_only: bool = True) -> int:
    """A file descriptor for the map pinned at ``path`` (``BPF_OBJ_GET``)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(_OBJ_GET, _attr(_OBJ, ctypes.addressof(name), 0,
                                F_RDONLY if read_only else 0))


def map_info(fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(_INFO.size)
    _bpf(_GET_INFO, _attr(_INFO_REQ, fd, _INFO.size, ctypes.addressof(info)))
    kind, _, key, value, entries, _, name = _INFO.unpack_from(info)
    return MapInfo(kind, key, value, entries, name.rstrip(b"\0").decode(errors="replace"))


def lookup_batch(fd: int, key_size: int, value_size: int,
                 chunk: int = 65536) -> tuple[bytes, bytes]:
    """Every entry of a hash map, as its keys and its values laid end to end, in the kernel's
    bucket order (``BPF_MAP_LOOKUP_BATCH``, Linux 5.6). Entries changed during the read may be
    seen or not: the kernel copies bucket by bucket, each under its lock."""
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token_in, token_out = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    first = True
    while True:
        attr = _attr(_BATCH, 0 if first else ctypes.addressof(token_in),
                     ctypes.addressof(token_out), ctypes.addressof(keys),
                     ctypes.addressof(values), chunk, fd, 0, 0)
        try:
            _bpf(_LOOKUP_BATCH, attr)
            done = False
        except OSError as error:
            if error.errno != errno.ENOENT:  # ENOENT: the last entries came with it
                raise
            done = True
        got = struct.unpack_from("=I", attr, _BATCH_COUNT)[0]
        key_parts.append(ctypes.string_at(keys, key_size * got))
        value_parts.append(ctypes.string_at(values, value_size * got))
        if done:
            return b"".join(key_parts), b"".join(value_parts)
        ctypes.memmove(token_in, token_out, 8)
        first = False


class Lookup:
    """Entries of one map looked up by key (``BPF_MAP_LOOKUP_ELEM``), about 1.5 µs each
    here: its buffers and attributes are made once, each key packed in place."""

    def __init__(self, fd: int, key: struct.Struct, value_size: int) -> None:
        self._number = _number()
        self._layout = key
        self._key = ctypes.create_string_buffer(key.size)
        self._value = ctypes.create_string_buffer(value_size)
        self._attr = _attr(_ELEM, fd, ctypes.addressof(self._key),
                           ctypes.addressof(self._value), 0)

    def __call__(self, *key: object) -> bytes | None:
        """The value stored under the key of these fields; None when there is none."""
        self._layout.pack_into(self._key, 0, *key)
        if _syscall_held(self._number, _LOOKUP, self._attr, _ATTR_SIZE) < 0:
            code = ctypes.get_errno()
            if code == errno.ENOENT:
                return None
            raise OSError(code, os.strerror(code))
        return self._value.raw


# --- writing: what the lab and the tests do as Cilium's agent would ------------------------

def map_create(kind: int, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=IIIII", attr, 0, kind, key_size, value_size, max_entries, 0)
    struct.pack_into("16s", attr, 28, name.encode()[:15])  # map_name, after numa_node
    return _bpf(_MAP_CREATE, attr)


def obj_pin(fd: int, path: str) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(_OBJ_PIN, _attr(_OBJ, ctypes.addressof(name), fd, 0))


def update(fd: int, key: bytes, value: bytes) -> None:
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value,
                                                                                   len(value))
    _bpf(_UPDATE, _attr(_ELEM, fd, ctypes.addressof(k), ctypes.addressof(v), 0))


def delete(fd: int, key: bytes) -> None:
    """Remove an entry; one already gone is not an error."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(_DELETE, _attr(_ELEM, fd, ctypes.addressof(k), 0, 0))
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise
