"""gzip for .nii.gz files, by the fastest library installed: standard gzip either way.

``isal`` (Intel ISA-L, a dependency of Hermes; ``isal.igzip``) compresses a 512 x 512 x 300
label map about 8x faster than zlib at level 1, into a smaller file, and decompresses a CT 1.7x
faster; ``zlib-ng`` (``zlib_ng.gzip_ng``) comes next; the standard library's ``gzip`` when
neither is installed. All three write standard gzip (RFC 1952) that nibabel, ITK and every
other reader decode; the compressed bytes differ between libraries, the decoded bytes never.
The three release the GIL while they work, so files compress in parallel threads.
"""

from __future__ import annotations

import gzip
import importlib
from types import ModuleType

__all__ = ["BACKEND", "CORRUPT_ERRORS", "DECODE_ERRORS", "compress", "decompress", "is_gzip"]


def _fastest() -> tuple[str, ModuleType | None]:
    for name, module in (("isal", "isal.igzip"), ("zlib-ng", "zlib_ng.gzip_ng")):
        try:
            return name, importlib.import_module(module)
        except ImportError:
            continue
    return "gzip", None


#: The library in use: ``isal``, ``zlib-ng`` or ``gzip``.
BACKEND, _FAST = _fastest()


def _errors() -> tuple[type[BaseException], ...]:
    """What a corrupt stream raises, beyond EOFError (truncated) and OSError (bad header)."""
    import zlib

    found: list[type[BaseException]] = [zlib.error]
    for module, name in (("isal.isal_zlib", "error"), ("zlib_ng.zlib_ng", "error")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


#: Errors of a corrupt gzip stream (a truncated one raises EOFError).
CORRUPT_ERRORS: tuple[type[BaseException], ...] = (OSError, *_errors())
#: Everything :func:`decompress` raises for a stream it cannot decode.
DECODE_ERRORS: tuple[type[BaseException], ...] = (EOFError, *CORRUPT_ERRORS)


def compress(data: bytes | memoryview, level: int = 1, backend: str | None = None) -> bytes:
    """One gzip member of ``data`` (mtime 0, so equal inputs give equal files).

    ``level`` is zlib's 0-9; isal serves levels 1 and 2 (its own levels 1 and 2, faster and
    smaller than zlib's 1), zlib-ng every level, the standard library the rest. ``backend``
    forces ``"gzip"`` (the standard library) or the installed fast one (``BACKEND``).
    """
    name = backend or BACKEND
    if name not in (BACKEND, "gzip"):
        raise ValueError(f"gzip backend {name!r} is not installed; this one has {BACKEND!r}")
    if _FAST is not None and name != "gzip" and (name == "zlib-ng" or level in (1, 2)):
        return bytes(_FAST.compress(data, level, mtime=0))
    return gzip.compress(data, compresslevel=level, mtime=0)


def decompress(data: bytes, backend: str | None = None) -> bytes:
    """The decoded bytes of every gzip member in ``data``. EOFError when truncated;
    ``CORRUPT_ERRORS`` when corrupt."""
    name = backend or BACKEND
    if _FAST is not None and name != "gzip":
        return bytes(_FAST.decompress(data))
    return gzip.decompress(data)


def is_gzip(data: bytes) -> bool:
    """Whether ``data`` starts with the gzip magic number."""
    return data[:2] == b"\x1f\x8b"
