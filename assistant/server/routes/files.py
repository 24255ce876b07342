"""Index management, as PrivateGPT's ingest API offers it, with `assistant index`'s crash safety (the index
changes only through retrieval's writer: staged, then committed atomically; uploads live in <index>/uploads/).

    POST   /v1/files                 upload one or more files (multipart field "file") and index them
    GET    /v1/files                 indexed files with their state
    GET    /v1/files/{id}            one of them
    GET    /v1/files/{id}/content    download it
    DELETE /v1/files/{id}            remove an upload from the index (folder files: delete them in the folder)
    POST   /v1/files/sync            re-sync the documents folder (new, changed and removed files)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request, UploadFile
from fastapi.responses import FileResponse

from assistant.server.errors import APIError

router = APIRouter()


def file_id(path: str) -> str:
    return "file-" + hashlib.sha1(path.encode()).hexdigest()[:24]


def _assistant(request: Request) -> Any:
    assistant = request.app.state.ctx.assistant
    if assistant is None or assistant.index_path is None:
        raise APIError(409, "this server has no document index (it serves the generator only)")
    return assistant


def _documents(assistant: Any) -> dict[str, Any]:
    from retrieval.store import IndexStore

    if not IndexStore.exists(assistant.index_path):
        return {}
    store = IndexStore.open(assistant.index_path)
    try:
        return store.documents()
    finally:
        store.close()


def _describe(row: Any) -> dict[str, Any]:
    upload = row.path.startswith("@uploads/")
    return {"id": file_id(row.path), "object": "file", "filename": row.path, "bytes": row.size,
            "created_at": row.mtime_ns // 1_000_000_000, "purpose": "assistants", "status": "processed",
            "state": "indexed", "source": "upload" if upload else "folder", "kind": row.kind, "sha256": row.sha256}


def _find(assistant: Any, ident: str) -> Any:
    for path, row in _documents(assistant).items():
        if file_id(path) == ident or path == ident:
            return row
    raise APIError(404, f"no indexed file with id {ident!r}", param="file_id")


def _location(assistant: Any, path: str) -> Path:
    """The file on disk behind an indexed path, never outside the folder or the uploads."""
    from retrieval.sync import UPLOADS_DIR, UPLOADS_PREFIX

    if path.startswith(UPLOADS_PREFIX):
        root, rel = Path(assistant.index_path) / UPLOADS_DIR, path[len(UPLOADS_PREFIX):]
    elif assistant.folder is not None:
        root, rel = Path(assistant.folder), path
    else:
        raise APIError(404, f"{path} is not on this machine's disk any more")
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        raise APIError(404, f"{path} is not on disk any more; re-sync the index")
    return target


def _report(report: Any) -> dict[str, Any]:
    data = asdict(report)
    return {k: v for k, v in data.items() if k != "index_path"}


def _refresh(assistant: Any) -> None:
    from retrieval.retriever import Retriever

    assistant.retriever = Retriever(assistant.index_path, assistant.encoder)


@router.get("/v1/files")
async def list_files(request: Request) -> dict[str, Any]:
    assistant = _assistant(request)
    rows = await to_thread.run_sync(_documents, assistant)
    return {"object": "list", "data": [_describe(rows[p]) for p in sorted(rows)]}


@router.get("/v1/files/{ident}")
async def get_file(ident: str, request: Request) -> dict[str, Any]:
    return _describe(await to_thread.run_sync(_find, _assistant(request), ident))


@router.get("/v1/files/{ident}/content")
async def file_content(ident: str, request: Request) -> Any:
    assistant = _assistant(request)
    row = await to_thread.run_sync(_find, assistant, ident)
    return FileResponse(_location(assistant, row.path), filename=Path(row.path).name)


@router.post("/v1/files")
async def upload(request: Request, file: list[UploadFile]) -> dict[str, Any]:
    assistant = _assistant(request)
    if not file:
        raise APIError(400, "send one or more files in the multipart field 'file'", param="file")
    with tempfile.TemporaryDirectory(prefix="assistant-upload-") as tmp:
        paths = []
        for item in file:
            name = Path(item.filename or "upload.txt").name
            if not name or name.startswith("."):
                raise APIError(400, f"bad file name {item.filename!r}", param="file")
            target = Path(tmp) / name
            with open(target, "wb") as out:
                shutil.copyfileobj(item.file, out)
            paths.append(target)
        report = await to_thread.run_sync(assistant.add_files, paths)
    rows = await to_thread.run_sync(_documents, assistant)
    names = {f"@uploads/{p.name}" for p in paths}
    return {"object": "list", "data": [_describe(rows[p]) for p in sorted(names) if p in rows],
            "report": _report(report)}


@router.delete("/v1/files/{ident}")
async def delete_file(ident: str, request: Request) -> dict[str, Any]:
    assistant = _assistant(request)
    row = await to_thread.run_sync(_find, assistant, ident)
    if not row.path.startswith("@uploads/"):
        raise APIError(409, f"{row.path} belongs to the documents folder: delete it there, then POST /v1/files/sync",
                       param="file_id")

    def remove() -> None:
        from retrieval.store import IndexStore

        with assistant._index_lock:
            try:
                on_disk = _location(assistant, row.path)
            except APIError:
                on_disk = None
            # the index first (atomic commit); a crash before the file is gone leaves an upload that the next
            # sync indexes again, never an index entry without its file
            store = IndexStore.open(assistant.index_path)
            try:
                with store.writer() as writer:
                    writer.remove_document(row.path)
                    writer.commit()
            finally:
                store.close()
            if on_disk is not None:
                os.unlink(on_disk)
            _refresh(assistant)

    await to_thread.run_sync(remove)
    return {"id": file_id(row.path), "object": "file", "deleted": True, "filename": row.path}


@router.post("/v1/files/sync")
async def resync(request: Request) -> dict[str, Any]:
    assistant = _assistant(request)
    if assistant.folder is None:
        raise APIError(409, "this server opened an index without its folder; start it with a FOLDER to re-sync")

    def run() -> Any:
        from retrieval.sync import sync_folder

        with assistant._index_lock:
            report = sync_folder(assistant.folder, assistant.index_path, assistant.encoder, progress=False)
            _refresh(assistant)
        return report

    return {"object": "sync", "report": _report(await to_thread.run_sync(run))}
