"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official `openai` client.

Tiny random models (a Generator through the batch scheduler, an index with a hashing encoder) for everything
but one test on the real default weights (marked `real`). The UI in a browser is in test_server_browser.py.
"""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest

from assistant_fakes import tiny_tokenizer
from server_fixtures import serve_tiny

openai = pytest.importorskip("openai")

KEY = "test-key-123"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = serve_tiny(tmp_path_factory.mktemp("server"), tiny_tokenizer(), max_batch=8)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _alone(live, messages, **kw):
    gen = live.assistant.generator
    ids = gen.tokenizer.encode(gen.render_chat(messages), add_special_tokens=False)
    return gen.generate(ids, **kw)


def test_models_and_health(client, live) -> None:
    assert {m.id for m in client.models.list()} >= {"assistant", "generator", "encoder"}
    health = httpx.get(live.url + "/health").json()
    assert health["status"] == "ok" and "steps" in health["engine"]


def test_chat_generator_plain_and_streaming(client, live) -> None:
    messages = [{"role": "user", "content": "The quick brown fox"}]
    expected = _alone(live, messages, max_new_tokens=16)
    reply = client.chat.completions.create(model="generator", messages=messages, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == len(expected.token_ids)
    chunks = list(client.chat.completions.create(model="generator", messages=messages, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)


def test_chat_assistant_carries_sources_and_citations(client) -> None:
    reply = client.chat.completions.create(model="assistant", messages=[
        {"role": "user", "content": "What does LoRA train?"}], max_tokens=12)
    extra = reply.model_extra
    assert reply.choices[0].message.content is not None
    assert extra["sources"] and {"number", "path", "page", "location", "snippet", "cited"} <= set(extra["sources"][0])
    from assistant.answer import passage_label

    for source in extra["sources"]:   # "file.pdf, p. 3" for a paged source; these Markdown files have no pages
        assert source["location"] == passage_label(source["path"], source["heading"], source["page"])
    assert isinstance(extra["citations"], list)
    assert reply.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="assistant", stream=True, max_tokens=12, messages=[
        {"role": "user", "content": "What does LoRA train?"}]))
    assert chunks[-1].model_extra["sources"] == extra["sources"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content


def test_chat_assistant_carries_each_sentence_with_its_supporting_words(client, live, monkeypatch) -> None:
    from assistant_fakes import composing

    monkeypatch.setattr(live.assistant, "stream", composing(
        live.assistant.stream, lambda question, answer: {"picks": [(1, 0), (1, 1)], "kind": "summary"}))
    messages = [{"role": "user", "content": "What does LoRA train?"}]
    reply = client.chat.completions.create(model="assistant", messages=messages, max_tokens=12)
    extra = reply.model_extra
    assert extra["kind"] == "summary" and extra["layout"] == "text" and len(extra["sentences"]) == 2
    texts = {s["number"]: s["text"] for s in extra["sources"]}
    for sentence in extra["sentences"]:
        assert {"text", "passage", "start", "end", "score", "role", "group"} <= set(sentence)
        assert texts[sentence["passage"]][sentence["start"]:sentence["end"]] == sentence["text"]
    first, second = extra["sentences"]
    assert first["passage"] == second["passage"] == 1 and first["end"] < second["start"]  # two spans of [1]
    assert reply.choices[0].message.content == " ".join(f"{s['text']} [{s['passage']}]." for s in extra["sentences"])
    chunks = list(client.chat.completions.create(model="assistant", stream=True, max_tokens=12, messages=messages))
    last = chunks[-1].model_extra
    assert (last["sentences"], last["kind"], last["layout"]) == (extra["sentences"], "summary", "text")
    assert all("sentences" not in c.model_extra for c in chunks[:-1])   # only the last chunk carries them


def test_n_choices_and_sampling_fields(client) -> None:
    reply = client.chat.completions.create(model="generator", n=3, temperature=0.9, seed=5, max_tokens=10,
                                           messages=[{"role": "user", "content": "Attention lets"}],
                                           extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})
    assert [c.index for c in reply.choices] == [0, 1, 2]
    again = client.chat.completions.create(model="generator", n=3, temperature=0.9, seed=5, max_tokens=10,
                                           messages=[{"role": "user", "content": "Attention lets"}],
                                           extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="assistant", n=2, messages=[{"role": "user", "content": "LoRA?"}])
    assert info.value.body["param"] == "n"


def test_completions_and_embeddings(client, live) -> None:
    expected = live.assistant.generator.generate("def add(a, b):", max_new_tokens=12)
    reply = client.completions.create(model="generator", prompt="def add(a, b):", max_tokens=12)
    assert reply.choices[0].text == expected.text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="generator", prompt="def add(a, b):", max_tokens=12, stream=True))
    assert streamed == expected.text
    texts = ["LoRA adapters", "attention heads"]
    for kw in ({}, {"encoding_format": "float"}):  # unless told, the client asks for base64 and decodes it
        result = client.embeddings.create(model="encoder", input=texts, **kw)
        got = np.array([d.embedding for d in result.data], dtype=np.float32)
        np.testing.assert_allclose(got, live.assistant.encoder.embed(texts), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kwargs, status, param", [
    (dict(model="gpt-4"), 404, "model"),
    (dict(temperature=5.0), 400, "temperature"),
    (dict(top_p=0.0), 400, "top_p"),
    (dict(max_tokens=0), 400, "max_tokens"),
    (dict(frequency_penalty=3.0), 400, "frequency_penalty"),
    (dict(extra_body={"top_k": -1}), 400, "top_k"),
    (dict(messages=[]), 400, "messages"),
])
def test_bad_requests_answer_openai_errors(client, kwargs, status, param) -> None:
    args = dict(model="generator", messages=[{"role": "user", "content": "hi"}], max_tokens=4) | kwargs
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**args)
    assert info.value.status_code == status
    assert info.value.body["param"] == param and info.value.body["message"]


def test_context_overflow_and_body_limits(client, live) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="generator", messages=[{"role": "user", "content": "token " * 600}])
    assert info.value.body["code"] == "context_length_exceeded"
    assert "512 tokens" in info.value.body["message"]
    big = {"model": "generator", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    response = httpx.post(live.url + "/v1/chat/completions", json=big, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    response = httpx.post(live.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()


def test_busy_engine_answers_503_with_retry_after(tmp_path) -> None:
    server = serve_tiny(tmp_path, tiny_tokenizer(), max_batch=1, max_waiting=0)
    try:
        response = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
            "model": "generator", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "server_busy"
    finally:
        server.stop()


def test_api_key_guards_api_ui_and_files(tmp_path) -> None:
    server = serve_tiny(tmp_path, tiny_tokenizer(), api_key=KEY, ui=True)
    try:
        anonymous = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            anonymous.models.list()
        assert info.value.body["code"] == "invalid_api_key"
        keyed = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        assert keyed.chat.completions.create(model="generator", max_tokens=3,
                                             messages=[{"role": "user", "content": "hi"}]).choices
        for path in ("/health", "/v1/files", "/gradio_api/info", "/config"):
            assert httpx.get(server.url + path).status_code == 401
        page = httpx.get(server.url + "/", headers={"accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        with httpx.Client(base_url=server.url) as browser:
            assert browser.post("/login", data={"key": "nope", "next": "/"}).status_code == 401
            login = browser.post("/login", data={"key": KEY, "next": "/"})
            assert login.status_code == 303 and "assistant_session" in browser.cookies
            assert KEY not in login.headers["set-cookie"]
            home = browser.get("/", headers={"accept": "text/html"})
            assert home.status_code == 200 and "gradio" in home.text.lower()
            assert browser.get("/v1/files").status_code == 200
    finally:
        server.stop()


def test_index_management(live) -> None:
    files = httpx.get(live.url + "/v1/files").json()["data"]
    assert {f["filename"] for f in files} >= {"lora.md", "rag.md"} and all(f["state"] == "indexed" for f in files)
    upload = httpx.post(live.url + "/v1/files", files=[("file", ("notes.txt", b"Quokkas live on Rottnest Island."))],
                        timeout=60).json()
    [new] = upload["data"]
    assert new["filename"] == "@uploads/notes.txt" and upload["report"]["added"] == ["@uploads/notes.txt"]
    assert httpx.get(f"{live.url}/v1/files/{new['id']}/content").content == b"Quokkas live on Rottnest Island."
    assert "Quokkas" in json.dumps(httpx.post(live.url + "/v1/chat/completions", timeout=60, json={
        "model": "assistant", "max_tokens": 4, "messages": [{"role": "user", "content": "Where do quokkas live?"}]
    }).json()["sources"])
    folder_file = next(f for f in files if f["filename"] == "lora.md")
    assert httpx.delete(f"{live.url}/v1/files/{folder_file['id']}").status_code == 409
    assert httpx.delete(f"{live.url}/v1/files/{new['id']}").json()["deleted"] is True
    assert new["id"] not in {f["id"] for f in httpx.get(live.url + "/v1/files").json()["data"]}
    assert httpx.get(f"{live.url}/v1/files/{new['id']}").status_code == 404
    (live.assistant.folder / "extra.md").write_text("# Extra\n\nA new note about beam search.\n")
    report = httpx.post(live.url + "/v1/files/sync", timeout=60).json()["report"]
    assert report["added"] == ["extra.md"]


def test_eight_concurrent_streams_share_decode_steps(client, live) -> None:
    """8 clients stream greedy answers at once: each gets exactly its answer alone, nothing crosses between
    streams, a client killed mid-stream disturbs no one, and the engine batched their decode steps."""
    questions = [f"{w} lets every token look" for w in ("Attention", "Retrieval", "The fox", "Tokenizers",
                                                         "Byte pairs", "Passages", "Numbers", "Answers")]
    messages = [[{"role": "user", "content": q}] for q in questions]
    expected = [_alone(live, m, max_new_tokens=40).text for m in messages]
    live.engine.reset_stats()
    results: dict[int, str] = {}
    barrier = threading.Barrier(9)

    def ask(i: int) -> None:
        barrier.wait()
        stream = client.chat.completions.create(model="generator", messages=messages[i], max_tokens=40, stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def killed() -> None:  # a ninth client that disconnects after its first chunks
        barrier.wait()
        with httpx.stream("POST", live.url + "/v1/chat/completions", timeout=30, json={
                "model": "generator", "stream": True, "max_tokens": 200,
                "messages": [{"role": "user", "content": "A very long story"}]}) as response:
            for n, _ in enumerate(response.iter_lines()):
                if n > 3:
                    break

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)] + [threading.Thread(target=killed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results.get(i) for i in range(8)] == expected
    stats = live.engine.stats()
    assert stats.max_batch >= 4 and stats.mean_batch > 1.5, stats
    assert stats.cancelled >= 1  # the killed client's slot was freed, not decoded to its 200 tokens


@pytest.mark.real
def test_real_weights_server(tmp_path) -> None:
    """The default generator through the server equals Generator.generate alone; embeddings equal Encoder.embed."""
    from assistant.server import create_app
    from assistant.settings import Settings
    from model.encoder import Encoder
    from model.generate import Generator
    from model.scheduler import BatchScheduler
    from server_fixtures import start_server

    gen, encoder = Generator.load(None, device="cpu"), Encoder.load(None)
    engine = BatchScheduler(gen, max_batch=4, context_length=1024)
    server = start_server(create_app(None, engine, Settings(), encoder=encoder, ui=False), None, engine)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)
        questions = ["What is the capital of France?", "Name a primary colour.", "What is 3 + 4?"]
        expected = [gen.chat([{"role": "user", "content": q}], max_new_tokens=32).text for q in questions]
        got: dict[int, str] = {}

        def ask(i: int) -> None:
            got[i] = client.chat.completions.create(model="generator", max_tokens=32, messages=[
                {"role": "user", "content": questions[i]}]).choices[0].message.content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert [got[i] for i in range(3)] == expected
        assert all(expected)  # non-empty answers
        texts = ["LoRA adapters", "the KV cache"]
        data = client.embeddings.create(model="encoder", input=texts).data
        np.testing.assert_allclose(np.array([d.embedding for d in data]), encoder.embed(texts), atol=1e-6)
    finally:
        server.stop()


def test_serve_refuses_to_bind_beyond_loopback_without_a_key(capsys, monkeypatch) -> None:
    from assistant.cli import main

    monkeypatch.delenv("ASSISTANT_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "refusing to bind 0.0.0.0 without an API key" in err and "--api-key" in err


def test_uploads_through_the_http_api_never_leave_the_uploads_folder(live) -> None:
    """The HTTP door sanitises upload names as the library does: `../` and absolute paths are reduced to a plain
    name inside <index>/uploads/, reserved and hidden names are rejected with a reason, nothing is written
    anywhere else."""
    root = live.assistant.index_path.parent
    before = {p for p in root.rglob("*") if "uploads" not in p.parts}
    hostile = [("../../escape.txt", b"Wombats dig burrows."), ("/etc/evil.txt", b"Echidnas lay eggs."),
               ("CON.txt", b"Reserved names are refused."), (".hidden.txt", b"Hidden names are refused.")]
    for name, data in hostile:
        response = httpx.post(live.url + "/v1/files", files=[("file", (name, data))], timeout=60)
        assert response.status_code in (200, 400), (name, response.text)
    listed = {f["filename"] for f in httpx.get(live.url + "/v1/files").json()["data"]}
    assert {"@uploads/escape.txt", "@uploads/evil.txt"} <= listed
    assert not any(n.startswith("@uploads/") and ("CON" in n or n.endswith(".hidden.txt")) for n in listed)
    uploads = live.assistant.index_path / "uploads"
    assert {p.name for p in uploads.iterdir()} >= {"escape.txt", "evil.txt"}
    assert all(p.resolve().is_relative_to(uploads.resolve()) for p in uploads.rglob("*"))
    after = {p for p in root.rglob("*") if "uploads" not in p.parts}
    assert not {p for p in after - before if p.suffix == ".txt"}  # no stray copy outside uploads/
    assert not (root.parent / "escape.txt").exists() and not (root / "escape.txt").exists()
