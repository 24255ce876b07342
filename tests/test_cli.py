"""The ask / chat / ui / eval commands: help, settings precedence, clear errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.cli import main
from assistant.pipeline import Assistant
from assistant.settings import Settings, SettingsError

from assistant_fakes import CORPUS, FakeGenerator, FakeRetriever

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """No user config file or ASSISTANT_* variable leaks into these tests."""
    import os

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    for name in list(os.environ):
        if name.startswith("ASSISTANT_") and name not in ("ASSISTANT_CACHE",):
            monkeypatch.delenv(name)


@pytest.fixture
def fake_assistant(monkeypatch):
    """Commands get an assistant on stand-in models instead of loading real weights."""
    created = {}

    def fake_open(args, **extra):
        from assistant.settings import from_args

        settings = from_args(args, **extra)
        assistant = Assistant(FakeRetriever(CORPUS, dense_floor=0.5),
                              FakeGenerator("LoRA trains low-rank matrices [1] [9]."), settings)
        created["assistant"] = assistant
        return settings, lambda: assistant

    monkeypatch.setattr("assistant.commands.common.open_assistant", fake_open)
    return created


@pytest.mark.parametrize("command", ["ask", "chat", "ui", "eval"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: assistant {command}" in out
    assert "--temperature" in out and "--no-adapter" in out


def test_ui_help_names_host_and_port(capsys):
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out and "127.0.0.1" in out


@pytest.mark.parametrize("question,expected", [
    ("", "the question is empty"),
    ("   ", "the question is empty"),
    ("x" * 50_000, "the limit is 4,000"),
])
def test_bad_questions_fail_with_a_clear_message(question, expected, capsys):
    assert main(["ask", question]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_missing_folder_or_index_fails_with_a_clear_message(tmp_path, capsys):
    assert main(["ask", "What is LoRA?", "--folder", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "missing" in err and "Traceback" not in err
    assert main(["ask", "What is LoRA?", "--index", str(tmp_path / "no-index")]) == 1
    err = capsys.readouterr().err
    assert "no index" in err and "assistant index" in err


def test_errors_in_a_real_subprocess_have_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "ask", "What is LoRA?", "--folder", str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: folder") and "Traceback" not in result.stderr


def test_eval_with_missing_question_file_fails_clearly(tmp_path, capsys):
    assert main(["eval", "--questions", str(tmp_path / "q.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_ask_json_has_checked_citations_and_sources(fake_assistant, capsys):
    assert main(["ask", "What does LoRA train?", "--json", "--temperature", "0.4", "--top-k", "7", "-k", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["text"] == "LoRA trains low-rank matrices [1]."
    assert data["citations"] == [1] and len(data["sources"]) == 3
    assert data["sources"][0]["path"] == "lora.md" and data["sources"][0]["cited"] is True
    params = fake_assistant["assistant"].generator.calls[0]["params"]
    assert params.temperature == 0.4 and params.top_k == 7


def test_ask_plain_prints_answer_then_sources(fake_assistant, capsys):
    assert main(["ask", "What does LoRA train?"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("LoRA trains low-rank matrices [1].")
    assert "Sources:" in out and "[1] lora.md › LoRA" in out and "(cited)" in out


@pytest.fixture
def composed_assistant(monkeypatch, fake_assistant):
    """Like fake_assistant, but its answers are composed: two sentences of passage [1], each with its offsets."""
    from assistant.commands import common
    from assistant_fakes import composing

    plain_open = common.open_assistant  # fake_assistant's stand-in

    def open_composed(args, **extra):
        settings, factory = plain_open(args, **extra)

        def make():
            bot = factory()
            bot.stream = composing(bot.stream, lambda question, answer: {"picks": [(1, 0), (1, 1)]})
            return bot

        return settings, make

    monkeypatch.setattr("assistant.commands.common.open_assistant", open_composed)
    return fake_assistant


def test_ask_json_gives_each_sentence_with_its_supporting_words(composed_assistant, capsys):
    assert main(["ask", "What does LoRA train?", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layout"] == "text" and data["kind"] == "explanation" and len(data["sentences"]) == 2
    texts = {s["number"]: s["text"] for s in data["sources"]}
    words = [texts[s["passage"]][s["start"]:s["end"]] for s in data["sentences"]]
    assert words == ["LoRA freezes the pretrained weights and trains two small low-rank matrices A and B",
                     "The rank r is usually between 4 and 64, so the adapter holds well under one percent of the "
                     "parameters"]
    assert [s["text"] for s in data["sentences"]] == words and {"role", "group", "score"} <= set(data["sentences"][0])


def test_ask_plain_prints_each_sentences_supporting_words_after_the_sources(composed_assistant, capsys):
    assert main(["ask", "What does LoRA train?"]) == 0
    out = capsys.readouterr().out
    sources, support = out.split("Sources:\n")[1].split("Supporting words:\n")
    assert "[1] lora.md › LoRA" in sources and "Evidence [" not in out
    lines = support.strip("\n").split("\n")
    assert lines[0] == '  [1] "LoRA freezes the pretrained weights and trains two small low-rank matrices A and B"'
    assert lines[1].startswith('  [1] "The rank r is usually between 4 and 64') and lines[1].endswith('…"')
    assert len(lines) == 2 and len(lines[1]) <= 110


def test_chat_streams_keeps_history_and_resets(fake_assistant, capsys):
    from assistant.commands import chat

    lines = iter(["What does LoRA train?", "and how big is it?", "/reset", "and how big is it?", "/quit"])
    parser_args = _parse(["chat"])
    assert chat.run(parser_args, input_fn=lambda prompt: next(lines)) == 0
    out = capsys.readouterr().out
    assert out.count("LoRA trains low-rank matrices [1].") == 3 and out.count("Sources:") == 3
    queries = [q for q, _, _ in fake_assistant["assistant"].retriever.queries]
    assert queries[1] != "and how big is it?" and "LoRA" in queries[1]   # follow-up used the history
    assert queries[2] == "and how big is it?"                             # ... and /reset forgot it


def test_eval_reports_metrics_as_json(fake_assistant, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    rows = [
        {"id": "a", "question": "What does LoRA train?", "sources": ["lora.md"], "keywords": [["low-rank"]],
         "unanswerable": False, "ci": True},
        {"id": "b", "question": "How does attention mix values?", "sources": ["rag.md"],
         "keywords": [["cites", "cite"]], "unanswerable": False, "ci": False},
    ]
    questions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["eval", "--questions", str(questions), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    m = result["metrics"]
    assert m["questions"] == 2 and m["hit_rate"] == 1.0
    assert m["answer_accuracy"] == 0.5          # "low-rank" is in the scripted answer, "cites" is not
    # [1] is lora.md for question a (gold); for b it is attention.md: not gold, no keyword in it.
    assert m["citation_precision"] == 0.5
    assert [r["correct"] for r in result["records"]] == [True, False]
    assert main(["eval", "--questions", str(questions), "--ci-subset", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["questions"] == 1


def _parse(argv):
    from assistant.cli import build_parser

    return build_parser().parse_args(argv)


# ---------------------------------------------------------------------- settings precedence
def test_settings_precedence_defaults_config_env_flags(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("k = 6\ntemperature = 0.5\nport = 8000\n[sampling]\ntop_p = 0.8\n")
    env = {"ASSISTANT_TEMPERATURE": "0.9", "ASSISTANT_USE_ADAPTER": "0"}
    settings = Settings.load({"k": 2, "top_k": None}, config=config, environ=env)
    assert settings.k == 2                      # flag beats config
    assert settings.temperature == 0.9          # env beats config
    assert settings.top_p == 0.8 and settings.port == 8000   # config beats defaults
    assert settings.use_adapter is False and settings.host == "127.0.0.1" and settings.top_k == 0


def test_settings_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("temprature = 1\n")
    with pytest.raises(SettingsError, match="unknown key"):
        Settings.load(config=bad, environ={})
    with pytest.raises(SettingsError, match="ASSISTANT_K|k"):
        Settings.load(environ={"ASSISTANT_K": "many"})
    with pytest.raises(SettingsError, match="does not exist"):
        Settings.load(config=tmp_path / "nope.toml", environ={})
    with pytest.raises(SettingsError, match="retrieval_mode"):
        Settings.load({"retrieval_mode": "magic"}, environ={})


def test_default_config_file_is_read(tmp_path, monkeypatch):
    home = tmp_path / "xdg"
    (home / "assistant").mkdir(parents=True)
    (home / "assistant" / "config.toml").write_text('retrieval_mode = "lexical"\n')
    settings = Settings.load(environ={"XDG_CONFIG_HOME": str(home)})
    assert settings.retrieval_mode == "lexical"


def test_no_adapter_flag_and_missing_default_adapter(tmp_path, monkeypatch):
    import assistant.settings as settings_module

    assert Settings(use_adapter=False).adapter_path() is None
    monkeypatch.setattr(settings_module, "DEFAULT_ADAPTER", tmp_path / "absent")
    assert Settings().adapter_path() is None     # runs the base model, logs once
    with pytest.raises(SettingsError, match="--no-adapter"):
        Settings(adapter=tmp_path / "absent").adapter_path()
    args = _parse(["ask", "q", "--no-adapter"])
    assert args.use_adapter is False and _parse(["ask", "q"]).use_adapter is None


# ---------------------------------------------------------------------- real weights
@pytest.mark.real
def test_eval_ci_subset_on_the_real_weights(capsys):
    """`assistant eval --ci-subset` end to end on the default weights and corpus (10 questions)."""
    code = main(["eval", "--ci-subset", "--json", "--folder", str(REPO / "corpus"), "--max-new-tokens", "64"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    m = result["metrics"]
    assert m["questions"] == 10 and m["unanswerable"] >= 1
    assert m["hit_rate"] >= 0.8                 # retrieval finds a gold file for nearly every question
    assert m["refusal_accuracy"] >= 0.5         # off-topic questions are refused
    assert m["false_refusal_rate"] <= 0.5       # a partly trained adapter refused 3 of 8; the base model 0
    assert m["answer_accuracy"] >= 0.125        # the 135M model gets some right (see docs/benchmarks.md)
    assert m["median_total_ms"] < 60_000


def test_ui_serves_the_corpus_unless_told_otherwise(tmp_path, monkeypatch):
    """`assistant ui` with no folder serves corpus/; FOLDER, ASSISTANT_FOLDER and an existing --index win."""
    from assistant.settings import DEFAULT_CORPUS

    opened, served = [], []
    monkeypatch.setattr(Assistant, "from_settings",
                        classmethod(lambda cls, settings, **kw: opened.append(settings) or "bot"))
    monkeypatch.setattr("assistant.ui.serve", lambda bot, host, port: served.append((bot, host, port)))
    monkeypatch.setattr("assistant.commands.ui.check_port", lambda host, port: None)  # 7860 may be taken here
    assert main(["ui"]) == 0
    assert opened[-1].folder is None and served[-1] == ("bot", "127.0.0.1", 7860)  # from_settings: corpus/
    assert main(["ui", "--index", str(tmp_path / "new-index"), "--port", "9000"]) == 0
    assert opened[-1].folder == DEFAULT_CORPUS and served[-1][2] == 9000
    (tmp_path / "old-index").mkdir()
    assert main(["ui", "--index", str(tmp_path / "old-index")]) == 0
    assert opened[-1].folder is None                          # an existing index is served as it is
    assert main(["ui", str(tmp_path)]) == 0
    assert opened[-1].folder == tmp_path
    monkeypatch.setenv("ASSISTANT_FOLDER", str(tmp_path))
    assert main(["ui", "--index", str(tmp_path / "new-index"), "--host", "0.0.0.0"]) == 0
    assert opened[-1].folder == tmp_path and served[-1][1] == "0.0.0.0"
