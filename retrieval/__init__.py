"""retrieval: documents to ranked passages (knows nothing about generation).

- `loaders`: files -> `Document`s, every skipped file with a reason
- `chunking`: `Document` -> token-budgeted `Chunk`s with heading path, page and offsets
- `store`: the index folder (SQLite + FAISS + bm25s), crash-safe generations, writer lock,
  `default_index_path(folder)`
- `sync`: `sync_folder` / `add_files` -> `SyncReport` (only new or changed files are embedded)
- `retriever`: `Retriever(index, encoder).search(query, k, mode, path_filter, mmr)` -> `Hit`s
- `evaluate`: BEIR metrics; `testing`: `HashingEncoder`, a fast stand-in encoder for tests
"""
