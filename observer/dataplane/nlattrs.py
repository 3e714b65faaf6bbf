"""Netlink attributes (``struct nlattr``, ``include/uapi/linux/netlink.h``): a 4-byte header
— length including itself, type with the ``NLA_F_NESTED`` / ``NLA_F_NET_BYTEORDER`` flags in
its top bits — then the payload, padded to 4 bytes. Host byte order unless the family's
header says otherwise for a given attribute."""

from __future__ import annotations

import struct

from observer.dataplane.model import DataplaneParseError

_ATTR = struct.Struct("=HH")
_TYPE_MASK = 0x3FFF
_NLA_F_NESTED = 0x8000


def attributes(data: bytes, start: int = 0, end: int | None = None
               ) -> dict[int, tuple[int, int]]:
    """A run of attributes: type -> (payload start, payload end), the last of a repeated
    type. Raises ``DataplaneParseError`` on one that overruns the run."""
    end = len(data) if end is None else end
    found = {}
    while start + 4 <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < 4 or start + length > end:
            raise DataplaneParseError(f"netlink attribute of length {length} overruns its "
                                      f"message ({end - start} bytes left)")
        found[kind & _TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return found


def elements(data: bytes, span: tuple[int, int], kind: int) -> list[tuple[int, int]]:
    """The payloads of every attribute of type ``kind`` in a nested run (a list such as
    ``NFTA_LIST_ELEM``'s, where the type repeats)."""
    found, (start, end) = [], span
    while start + 4 <= end:
        length, own = _ATTR.unpack_from(data, start)
        if length < 4 or start + length > end:
            raise DataplaneParseError(f"netlink list element of length {length} overruns "
                                      "its list")
        if own & _TYPE_MASK == kind:
            found.append((start + 4, start + length))
        start += (length + 3) & ~3
    return found


def attribute(kind: int, payload: bytes, *, nested: bool = False) -> bytes:
    size = 4 + len(payload)
    return (_ATTR.pack(size, kind | (_NLA_F_NESTED if nested else 0)) + payload
            + b"\0" * (-size % 4))
