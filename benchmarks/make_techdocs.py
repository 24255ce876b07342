"""Build benchmarks/folders/techdocs (and techdocs-dev): technical-documentation folders for retrieval benchmarks.

    python benchmarks/make_techdocs.py                 # (re)write benchmarks/folders/techdocs/
    python benchmarks/make_techdocs.py --check         # verify benchmarks/techdocs_questions.jsonl against the folder
    python benchmarks/make_techdocs.py --dev           # (re)write benchmarks/folders/techdocs-dev/
    python benchmarks/make_techdocs.py --dev --check   # verify benchmarks/techdocs_dev_questions.jsonl against it

One Markdown file per standard-library module (none of the 12 modules of folders/pydocs), in the same format as
pydocs: `# module`, the module docstring's first paragraph, then per object `## module.name`, a fenced signature
and the object's docstring, read from the running interpreter (Python 3.11; other versions give other text).
The questions in benchmarks/techdocs_questions.jsonl were written by hand for this folder, in the words a user of
the documented library would use (most do not name the function); each names its source file and concept
strings (groups of alternatives) that occur verbatim in it, which decide which chunks are relevant
(benchmarks/rerank.py `relevant_chunks`).

The reranker's technical training text (assistant/docstring_pairs.py) comes from third-party packages only, so
this folder stays unseen by everything trained in this project.

The dev variant (--dev) is built the same way from DEV_OBJECTS: other standard-library modules, in neither
TECHDOC_OBJECTS nor pydocs, with their own hand-written questions (benchmarks/techdocs_dev_questions.jsonl, ids
tv01...). It is for choosing parameters, such as hybrid search's fusion weight, without looking at the test sets
(techdocs, pydocs), so a value chosen on it can be reported on those honestly. Dotted object names (`Queue.put`)
are looked up attribute by attribute on the module.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.make_folders import PYDOC_OBJECTS, PYDOCS_PYTHON, _clean, _norm, object_section  # noqa: E402

FOLDER = HERE / "folders" / "techdocs"
QUESTIONS = HERE / "techdocs_questions.jsonl"
DEV_FOLDER = HERE / "folders" / "techdocs-dev"
DEV_QUESTIONS = HERE / "techdocs_dev_questions.jsonl"
KINDS = ("factoid", "definition", "explanation", "list", "comparison", "procedure", "yesno", "howto")

TECHDOC_OBJECTS: dict[str, list[str]] = {
    "argparse": ["ArgumentParser", "Action", "FileType"],
    "logging": ["basicConfig", "Formatter", "Logger", "Filter", "getLevelName"],
    "subprocess": ["run", "Popen", "check_output", "getstatusoutput", "list2cmdline"],
    "os": ["makedirs", "fwalk", "removedirs", "renames"],
    "tempfile": ["NamedTemporaryFile", "TemporaryFile", "mkstemp", "mkdtemp", "mktemp"],
    "glob": ["glob", "iglob"],
    "fnmatch": ["fnmatch"],
    "csv": ["reader", "writer"],
    "threading": ["Semaphore", "BoundedSemaphore", "Condition", "RLock"],
    "concurrent.futures": ["as_completed", "wait"],
    "asyncio": ["Lock", "Future", "Event", "BufferedProtocol"],
    "pickle": ["dump", "dumps", "load", "Pickler"],
    "zipfile": ["ZipFile", "Path"],
    "gzip": ["open"],
    "urllib.parse": ["quote", "urlparse", "parse_qs", "urlencode", "unquote"],
    "base64": ["b64encode", "b64decode", "a85encode", "b32decode"],
    "uuid": ["UUID", "getnode", "uuid1"],
    "typing": ["Annotated", "NewType", "ParamSpec", "NamedTuple", "Generic"],
    "inspect": ["Signature", "Parameter", "get_annotations", "classify_class_attrs"],
    "traceback": ["TracebackException", "extract_tb", "format_exception_only", "print_exception"],
    "warnings": ["catch_warnings", "filterwarnings", "simplefilter"],
    "unittest": ["TestCase", "TestSuite", "TestResult"],
    "operator": ["attrgetter", "methodcaller", "length_hint"],
    "difflib": ["SequenceMatcher", "get_close_matches", "ndiff", "context_diff", "Differ"],
    "decimal": ["Context", "localcontext"],
    "fractions": ["Fraction"],
    "weakref": ["finalize", "WeakKeyDictionary"],
    "socket": ["create_connection", "create_server", "getaddrinfo", "getfqdn"],
    "io": ["open", "TextIOWrapper", "FileIO", "IOBase"],
    "codecs": ["EncodedFile", "encode", "decode"],
    "abc": ["ABCMeta", "abstractmethod", "update_abstractmethods"],
    "platform": ["architecture", "platform", "libc_ver", "uname"],
    "ast": ["literal_eval", "NodeTransformer", "NodeVisitor", "dump", "get_docstring"],
    "timeit": ["Timer"],
    "zlib": ["compressobj"],
    "mimetypes": ["guess_type", "guess_extension", "add_type"],
    "xml.etree.ElementTree": ["canonicalize", "QName", "XMLID"],
    "filecmp": ["cmp", "dircmp", "cmpfiles"],
    "ipaddress": ["ip_address", "ip_network", "ip_interface", "collapse_addresses", "summarize_address_range"],
    "time": ["strftime", "strptime", "mktime", "tzset", "gmtime"],
    "math": ["comb", "perm", "isclose", "hypot", "prod"],
    "hashlib": ["file_digest"],
    "secrets": ["token_hex"],
    "bisect": ["bisect_left", "bisect_right"],
    "getpass": ["getpass"],
    "locale": ["getdefaultlocale", "setlocale", "normalize"],
    "signal": ["signal", "getsignal", "setitimer"],
}
assert not set(TECHDOC_OBJECTS) & set(PYDOC_OBJECTS), "techdocs must not repeat a pydocs module"

# The dev folder's modules: none of TECHDOC_OBJECTS or PYDOC_OBJECTS (asserted below).
DEV_OBJECTS: dict[str, list[str]] = {
    "hmac": ["new", "digest", "compare_digest"],
    "html": ["escape", "unescape"],
    "shelve": ["open", "Shelf"],
    "configparser": ["BasicInterpolation", "ExtendedInterpolation", "RawConfigParser.read", "RawConfigParser.get",
                     "RawConfigParser.read_dict"],
    "tarfile": ["open", "is_tarfile", "TarFile.add", "TarFile.extractfile"],
    "enum": ["Enum", "auto", "unique", "nonmember", "property"],
    "graphlib": ["TopologicalSorter.add", "TopologicalSorter.get_ready", "TopologicalSorter.done",
                 "TopologicalSorter.static_order", "CycleError"],
    "queue": ["PriorityQueue", "Queue.put", "Queue.get", "Queue.task_done", "Queue.join"],
    "sched": ["scheduler.enter", "scheduler.enterabs", "scheduler.run", "scheduler.cancel"],
    "selectors": ["BaseSelector.register", "BaseSelector.select", "BaseSelector.modify"],
    "socketserver": ["BaseServer", "ThreadingMixIn", "BaseRequestHandler"],
    "random": ["sample", "choices", "seed", "SystemRandom"],
    "struct": ["pack", "unpack", "calcsize", "iter_unpack"],
    "binascii": ["hexlify", "unhexlify", "a2b_base64", "crc32"],
    "lzma": ["open", "LZMACompressor", "compress"],
    "getopt": ["getopt", "gnu_getopt"],
    "tracemalloc": ["start", "get_traced_memory", "reset_peak", "get_object_traceback", "Snapshot.compare_to"],
    "dis": ["dis", "get_instructions", "Bytecode"],
    "atexit": ["register", "unregister"],
    "fileinput": ["input", "FileInput"],
    "tokenize": ["tokenize", "detect_encoding", "open"],
    "urllib.request": ["urlopen", "build_opener"],
    "zipapp": ["create_archive"],
    "doctest": ["testmod", "run_docstring_examples"],
    "cProfile": ["run", "Profile"],
    "pstats": ["Stats"],
    "email.utils": ["parseaddr", "formataddr", "formatdate", "make_msgid", "localtime"],
    "smtplib": ["SMTP.sendmail", "SMTP.starttls", "SMTP.send_message", "SMTP.login"],
    "http.cookies": ["SimpleCookie", "Morsel"],
    "runpy": ["run_path", "run_module"],
    "pkgutil": ["iter_modules", "walk_packages", "get_data"],
    "gc": ["collect", "freeze", "get_referrers"],
}
assert not set(DEV_OBJECTS) & (set(TECHDOC_OBJECTS) | set(PYDOC_OBJECTS)), "techdocs-dev must not repeat a module"


def _signature(name: str, obj) -> str:
    short = name.split(".")[-1]
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        sig = "(...)"
    return _clean(("class " if inspect.isclass(obj) else "") + short + sig)


def _description(mod) -> str:
    doc = inspect.cleandoc(mod.__doc__ or "")
    return " ".join(doc.split("\n\n")[0].split())


def build(objects: dict[str, list[str]] = TECHDOC_OBJECTS) -> dict[str, str]:
    """File name -> Markdown text for every module of `objects` (TECHDOC_OBJECTS or DEV_OBJECTS)."""
    if sys.version_info[:2] != PYDOCS_PYTHON:
        print(f"warning: techdocs are made from Python {PYDOCS_PYTHON[0]}.{PYDOCS_PYTHON[1]} docstrings; this "
              f"is Python {sys.version_info[0]}.{sys.version_info[1]}", file=sys.stderr)
    files = {}
    for module, names in objects.items():
        mod = importlib.import_module(module)
        out = [f"# {module}", ""]
        description = _description(mod)
        if description:
            out += [description, ""]
        for name in names:
            obj = mod
            for part in name.split("."):
                obj = getattr(obj, part)
            out += object_section(f"{module}.{name}", _signature(name, obj), obj)
        files[f"{module}.md"] = "\n".join(out).rstrip() + "\n"
    return files


def write(folder: Path = FOLDER, objects: dict[str, list[str]] = TECHDOC_OBJECTS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files = build(objects)
    for old in folder.glob("*.md"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8", newline="\n")
    print(f"{folder.name}: {len(files)} files, {sum(len(t) for t in files.values()):,} characters")


def check(questions: Path = QUESTIONS, folder: Path = FOLDER,
          objects: dict[str, list[str]] = TECHDOC_OBJECTS) -> int:
    """Every question well formed, its sources present, every concept alternative in one of its sources."""
    folder_name = f"benchmarks/folders/{folder.name}"
    errors = []
    rows = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [r.get("id") for r in rows]
    if len(ids) != len(set(ids)):
        errors.append("duplicate ids")
    seen = set()
    for r in rows:
        rid = r.get("id")
        for key in ("id", "folder", "question", "kind", "concepts", "sources"):
            if key not in r:
                errors.append(f"{rid}: missing {key}")
        if r.get("folder") != folder_name:
            errors.append(f"{rid}: folder must be {folder_name}")
        if r.get("kind") not in KINDS:
            errors.append(f"{rid}: unknown kind {r.get('kind')}")
        if r.get("question") in seen:
            errors.append(f"{rid}: repeated question")
        seen.add(r.get("question"))
        texts = []
        for name in r.get("sources", []):
            path = folder / name
            if not path.is_file():
                errors.append(f"{rid}: no source {name}")
            else:
                texts.append(_norm(path.read_text(encoding="utf-8")))
        if not r.get("concepts"):
            errors.append(f"{rid}: no concepts")
        for group in r.get("concepts", []):
            for alt in group:
                if not any(_norm(alt) in t for t in texts):
                    errors.append(f"{rid}: concept {alt!r} not in {r.get('sources')}")
    stale = [n for n, t in build(objects).items()
             if not (folder / n).is_file() or (folder / n).read_text(encoding="utf-8") != t]
    if stale and sys.version_info[:2] == PYDOCS_PYTHON:
        errors += [f"{n} differs from what make_techdocs.py writes" for n in stale]
    print(f"{len(rows)} questions checked")
    for e in errors:
        print("ERROR:", e)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--dev", action="store_true",
                        help="the dev folder (folders/techdocs-dev from DEV_OBJECTS, techdocs_dev_questions.jsonl)")
    parser.add_argument("--questions", type=Path, default=None,
                        help="the question file --check reads (default: techdocs_questions.jsonl, or "
                             "techdocs_dev_questions.jsonl with --dev)")
    args = parser.parse_args(argv)
    if args.dev:
        folder, objects, questions = DEV_FOLDER, DEV_OBJECTS, DEV_QUESTIONS
    else:
        folder, objects, questions = FOLDER, TECHDOC_OBJECTS, QUESTIONS
    if args.check:
        return check(args.questions or questions, folder, objects)
    write(folder, objects)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
