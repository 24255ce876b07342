"""Upload file names: what a name given by a browser or an HTTP client may become on disk.

Uploads live in `<index>/uploads/<name>` and are indexed as "@uploads/<name>". A name is only ever a single
plain file name inside that folder: `safe_upload_name` keeps the last component of whatever path it is
given (`/`, `\\` and drive letters all count as separators), and refuses names that cannot be a file there
(empty, "." or "..", NUL or other control characters, names over 255 bytes, hidden names starting with ".",
and names Windows reserves such as CON or NUL.txt). Every door (the Python API, the Gradio page, an HTTP
API) goes through it, so none can read or write outside `<index>/uploads/`.

An upload with the same (sanitised) name as an earlier one replaces that upload, and only that one: its
old passages leave the index and the new file's take their place. Folder files are never touched by an
upload (their paths never start with "@uploads/").
"""

from __future__ import annotations

import re
from pathlib import Path

from retrieval.loaders import SkipFile, kind_for

MAX_NAME_BYTES = 255
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_upload_name(name: str) -> str:
    """The file name an upload called `name` is stored under; raises SkipFile(reason) when there is none.

    >>> safe_upload_name("../../etc/notes.md"), safe_upload_name("C:\\\\Users\\\\me\\\\a.txt")
    ('notes.md', 'a.txt')
    """
    if not isinstance(name, str):
        name = str(name)
    if "\x00" in name:
        raise SkipFile("invalid file name (contains a NUL byte)")
    base = re.split(r"[/\\]", name)[-1]
    base = re.sub(r"^[A-Za-z]:", "", base).strip()  # "C:name" (a drive-relative Windows path)
    if base in ("", ".", ".."):
        raise SkipFile(f"invalid file name {name[:80]!r} (no file name in it)")
    if _CONTROL.search(base):
        raise SkipFile(f"invalid file name {base[:80]!r} (contains control characters)")
    if base.startswith("."):
        raise SkipFile(f"invalid file name {base[:80]!r} (hidden names starting with '.' are not accepted)")
    if len(base.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES:
        raise SkipFile(f"file name too long ({len(base.encode('utf-8', errors='surrogatepass'))} bytes > "
                       f"limit {MAX_NAME_BYTES})")
    stem = base.split(".")[0].rstrip(" ").lower()
    if stem in _WINDOWS_RESERVED:
        raise SkipFile(f"invalid file name {base!r} ({stem.upper()} is a reserved device name)")
    if base.endswith((" ", ".")):
        raise SkipFile(f"invalid file name {base!r} (ends with a space or a dot)")
    if kind_for(base) is None:
        raise SkipFile(f"unsupported file type {Path(base).suffix.lower() or '(no extension)'}")
    return base


def upload_target(uploads_dir: Path, name: str) -> Path:
    """`uploads_dir / safe_upload_name(name)`, checked to lie directly inside `uploads_dir`."""
    target = Path(uploads_dir) / safe_upload_name(name)
    if target.parent.resolve() != Path(uploads_dir).resolve():  # belt and braces
        raise SkipFile(f"invalid file name {name[:80]!r}")
    return target
