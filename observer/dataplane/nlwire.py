"""Netlink on the wire (``include/uapi/linux/netlink.h``). A datagram holds messages, each a
16-byte ``struct nlmsghdr`` (length including itself, type, flags, sequence number, port id;
host byte order) and its payload, padded to 4 bytes. Payloads end in attributes
(``struct nlattr``): a 4-byte header — length including itself, type with the
``NLA_F_NESTED`` / ``NLA_F_NET_BYTEORDER`` flags in its top bits — then the payload, padded to
4 bytes; host byte order unless the family says otherwise for a given attribute."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from observer.dataplane.model import DataplaneParseError

HEADER = struct.Struct("=IHHII")
# A receive buffer larger than any datagram the kernel sends here (a dump's or a notification's
# skb: NLMSG_GOODSIZE, or one message that needs more).
DATAGRAM = 1024 * 1024
_ATTR = struct.Struct("=HH")
_TYPE_MASK = 0x3FFF
_NLA_F_NESTED = 0x8000


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """Each message of a datagram: (type, sequence number, payload start, payload end).
    Raises ``DataplaneParseError`` at one that does not fit (what follows cannot be framed)."""
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < HEADER.size:
            raise DataplaneParseError(f"netlink message header truncated ({end - offset} "
                                      "bytes)")
        length, kind, _, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > end:
            raise DataplaneParseError(f"netlink message of length {length} in a datagram "
                                      f"of {end - offset} bytes")
        yield kind, seq, offset + HEADER.size, offset + length
        offset += (length + 3) & ~3


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
