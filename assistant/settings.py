"""Every setting of the assistant in one dataclass, and where values come from.

Precedence, lowest to highest:

    defaults (this file) < config file (TOML) < ASSISTANT_* environment variables < CLI flags / keyword args

The config file is `--config PATH`, else `$ASSISTANT_CONFIG`, else `$XDG_CONFIG_HOME/assistant/config.toml`
(`~/.config/assistant/config.toml`). It holds top-level keys named like the fields below, e.g.

    k = 4
    temperature = 0.2
    [sampling]            # optional table; same keys as the sampling fields
    top_p = 0.9

Environment variables are the upper-cased field names: `ASSISTANT_K=6`, `ASSISTANT_TEMPERATURE=0.3`,
`ASSISTANT_USE_ADAPTER=0`, `ASSISTANT_FOLDER=~/notes`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from model.errors import UserError

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DEFAULT_CORPUS = REPO_DIR / "corpus"
DEFAULT_ADAPTER = PACKAGE_DIR / "data" / "adapter"
DEFAULT_READER = PACKAGE_DIR / "data" / "reader"
DEFAULT_RERANKER = PACKAGE_DIR / "data" / "reranker"

# Calibrated on benchmarks/questions.jsonl (see docs/benchmarks.md, "Assistant"): the best hit's dense
# cosine separates answerable from unanswerable questions; below this the assistant refuses without
# calling the generator. `assistant eval --calibrate` recomputes it.
DEFAULT_REFUSAL_THRESHOLD = 0.23

# Calibrated on the dev split of the SQuAD RAG benchmark (benchmarks/reader_rag.py --split dev --calibrate):
# the evidence's support = the reader's span score (span minus "no answer" logit)
#   + COVERAGE_WEIGHT x the IDF-weighted share of the question's terms found in the evidence's passage
#   + COSINE_WEIGHT x the best retrieval cosine (+ OVERLAP_WEIGHT x question words in the evidence sentence),
# weights from a logistic regression on dev, terms chosen by cross-validation there; below the threshold no
# passage supports an answer and the assistant refuses (dev: 75% of unanswerable questions refused, 7.3% of
# answerable ones; held at 8% there, as dev -> test added ~2-3 points before).
DEFAULT_READER_THRESHOLD = 6.2103
DEFAULT_READER_OVERLAP_WEIGHT = 0.0
DEFAULT_READER_COVERAGE_WEIGHT = 4.6759
DEFAULT_READER_COSINE_WEIGHT = 4.3352

RETRIEVAL_MODES = ("hybrid", "dense", "lexical")
RERANK_MODES = ("rrf", "replace")  # retrieval.retriever.RERANK_MODES (this module imports nothing heavy)
FUSIONS = ("convex", "rrf")  # retrieval.retriever.FUSIONS
ANSWER_MODES = ("guided", "generate", "extract")

# Fields that are passed to the generator as sampling options (model.sampling.SamplingParams).
SAMPLING_FIELDS = (
    "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
    "presence_penalty", "no_repeat_ngram_size", "max_new_tokens", "seed", "num_beams", "length_penalty",
)


class SettingsError(UserError):
    """A setting has a bad value, or the config file cannot be read."""


# Open answers (assistant/compose.py): calibrated on benchmarks/open_questions.jsonl (corpus, Python docs, reports)
# together with the SQuAD dev split; see docs/benchmarks.md.
DEFAULT_OPEN_MIN_SUPPORT = 1.25
# open_reader_floor / open_strong_support: SQuAD dev and the open set together (docs/benchmarks.md): of 12 dev
# unanswerable definition/explanation/yes-no questions the reader gives 7 a negative best span, all below 1.8;
# every answerable dev one has a best span >= 6.7; the open set's 4 answerable ones below 0 score 1.84-3.49.
DEFAULT_SENTENCE_FALLBACK = 0.0  # off: on the open set it answered 1 unanswerable and no answerable


@dataclass
class Settings:
    """All knobs of the assistant. Paths are `Path` or None (None = the documented default)."""

    # What to answer about.
    folder: Path | None = None          # documents folder; `assistant ui` with no folder uses corpus/
    index: Path | None = None           # index path; None = retrieval.store.default_index_path(folder)
    # Models.
    generator: str | None = None        # generator spec (path / id); None = SmolLM2-135M-Instruct Q4_1
    encoder: str | None = None          # encoder spec; None = bundled all-MiniLM-L6-v2
    use_adapt: bool = True              # False = `--no-adapt`: an adapted index switches back to the bundled encoder
    adapter: Path | None = None         # LoRA adapter folder; None = assistant/data/adapter if present
    use_adapter: bool = True            # False = plain base model (`--no-adapter`)
    device: str | None = None           # "cpu", "cuda", ...; None = CUDA when available
    dtype: str | None = None            # "float32", "bfloat16"; None = the device's default
    quantize: str | None = "auto"       # generator weights: auto (int4 on CPU for Q4 GGUF), none, int8, int4
    reader: Path | None = None          # evidence reader folder; None = assistant/data/reader
    use_reader: bool = True             # False = no reader (`--no-reader`): answers as in `generate` mode
    answer_mode: str = "guided"         # guided | generate | extract (see assistant/evidence.py)
    reader_threshold: float = DEFAULT_READER_THRESHOLD  # evidence support below this: no passage answers; refuse
    reader_overlap_weight: float = DEFAULT_READER_OVERLAP_WEIGHT  # weight of question-word overlap in support
    reader_coverage_weight: float = DEFAULT_READER_COVERAGE_WEIGHT  # weight of IDF-weighted question-term coverage
    reader_cosine_weight: float = DEFAULT_READER_COSINE_WEIGHT  # weight of the best retrieval cosine
    open_answers: bool = True           # compose explanations, lists, comparisons, summaries (assistant/compose.py)
    open_min_support: float = DEFAULT_OPEN_MIN_SUPPORT  # best unit score below this: no passage answers; refuse
    open_reader_floor: float = 0.0      # definitions / explanations / yes-no: the reader's best span inside a sentence
    open_strong_support: float = 1.8    # ... below the floor refuses unless the best unit scores at least this
    sentence_fallback: float = DEFAULT_SENTENCE_FALLBACK  # factoid refused by the reader but a unit scores this: say it
    table_min_confidence: float = 0.5   # a table cell the question names with this confidence is the answer
    open_rewrite: bool = False          # guided: the generator rewords composed answers, each sentence checked
    # Retrieval and prompt.
    k: int = 4                          # passages given to the model
    retrieval_mode: str = "hybrid"      # hybrid | dense | lexical
    hybrid_fusion: str = "convex"       # convex: mix both scores of every candidate | rrf: reciprocal-rank fusion
    rerank: int = 0                     # rescore the top N hits with the cross-encoder (0 = off; docs/benchmarks.md)
    reranker: Path | None = None        # cross-encoder folder; None = assistant/data/reranker
    rerank_mode: str = "rrf"            # rrf: fuse its order with the retriever's | replace: its order alone
    refusal_threshold: float = DEFAULT_REFUSAL_THRESHOLD   # best dense cosine below this: refuse
    relative_floor: float = 0.5         # drop passages whose cosine is below this x the best one's
    max_context_tokens: int = 2048      # prompt + answer budget (<= the model's window); small = fast on CPU
    max_history_turns: int = 6          # earlier chat messages kept (oldest dropped first when over budget)
    max_question_chars: int = 4000      # longer questions are rejected with a clear message
    # Sampling (passed to model.sampling.SamplingParams).
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0     # > 1 also penalises copying from the passages (HF semantics)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 160
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    # Serving.
    host: str = "127.0.0.1"
    port: int = 7860
    threads: int | None = None          # torch CPU threads; None = torch's default

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        overrides: dict[str, Any] | None = None,
        config: str | Path | None = None,
        environ: typing.Mapping[str, str] | None = None,
    ) -> "Settings":
        """Defaults < config file < ASSISTANT_* env < `overrides` (None values in overrides are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        values.update(_read_config(config, environ))
        values.update(_read_env(environ))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in _FIELD_TYPES})
        settings = cls()
        for name, raw in values.items():
            setattr(settings, name, _convert(name, raw))
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (None values keep the current value)."""
        clean = {k: _convert(k, v) for k, v in changes.items() if v is not None}
        unknown = [k for k in clean if k not in _FIELD_TYPES]
        if unknown:
            raise SettingsError(f"unknown setting(s) {unknown}; known: {sorted(_FIELD_TYPES)}")
        new = dataclasses.replace(self, **clean)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise SettingsError for values that cannot work."""
        if self.answer_mode not in ANSWER_MODES:
            raise SettingsError(f"answer_mode must be one of {ANSWER_MODES}, not {self.answer_mode!r}")
        if self.retrieval_mode not in RETRIEVAL_MODES:
            raise SettingsError(f"retrieval_mode must be one of {RETRIEVAL_MODES}, not {self.retrieval_mode!r}")
        if self.hybrid_fusion not in FUSIONS:
            raise SettingsError(f"hybrid_fusion must be one of {FUSIONS}, not {self.hybrid_fusion!r}")
        if not 0 <= self.rerank <= 100:
            raise SettingsError(f"rerank (hits the reranker rescores) must be between 0 and 100, not {self.rerank}")
        if self.rerank_mode not in RERANK_MODES:
            raise SettingsError(f"rerank_mode must be one of {RERANK_MODES}, not {self.rerank_mode!r}")
        if not 1 <= self.k <= 50:
            raise SettingsError(f"k (number of passages) must be between 1 and 50, not {self.k}")
        if self.max_new_tokens < 1:
            raise SettingsError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.max_context_tokens < 256:
            raise SettingsError(f"max_context_tokens must be at least 256, not {self.max_context_tokens}")
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"port must be between 1 and 65535, not {self.port}")
        if self.max_question_chars < 1:
            raise SettingsError("max_question_chars must be positive")

    # ------------------------------------------------------------------ derived values
    def sampling(self) -> dict[str, Any]:
        """The sampling options as keyword arguments for model.sampling.SamplingParams."""
        return {name: getattr(self, name) for name in SAMPLING_FIELDS}

    def adapter_path(self) -> Path | None:
        """The adapter folder to load, or None (disabled, or the default one is not shipped)."""
        return _weights_folder("adapter", self.adapter, self.use_adapter, DEFAULT_ADAPTER / "adapter.safetensors",
                               "running the base model without one")

    def reader_path(self) -> Path | None:
        """The reader folder to load, or None (disabled, or the default one is not shipped)."""
        return _weights_folder("reader", self.reader, self.use_reader, DEFAULT_READER / "reader.safetensors",
                               "answers are written by the generator alone")

    def reranker_path(self) -> Path | None:
        """The cross-encoder folder to load, or None (rerank off, or none given and none shipped)."""
        if self.rerank <= 0:
            return None
        return _weights_folder("reranker", self.reranker, True, DEFAULT_RERANKER / "cross_encoder.safetensors",
                               "hits are not reranked")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field."""
        return {f.name: (str(v) if isinstance(v, Path) else v) for f in fields(self) for v in [getattr(self, f.name)]}


# ---------------------------------------------------------------------- helpers
_FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in fields(Settings)}
_HINTS = typing.get_type_hints(Settings)
_LOGGED: set[str] = set()


def _log_once(message: str, *args: Any) -> None:
    key = message % args
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(message, *args)


def _weights_folder(what: str, given: Path | None, enabled: bool, bundled: Path, without: str) -> Path | None:
    """An optional weights folder: None when disabled; the given folder (which must exist); else the bundled
    one when it is shipped (`bundled` names its weights file), else None with a one-time warning."""
    if not enabled:
        return None
    if given is not None:
        if not Path(given).exists():
            raise SettingsError(f"{what} folder {given} does not exist; fix the path or use --no-{what}")
        return Path(given)
    if bundled.exists():
        return bundled.parent
    _log_once("no %s found in %s; %s", what, bundled.parent, without)
    return None


def default_config_path(environ: typing.Mapping[str, str] | None = None) -> Path:
    """`$ASSISTANT_CONFIG`, else `$XDG_CONFIG_HOME/assistant/config.toml` (~/.config/...)."""
    environ = os.environ if environ is None else environ
    if environ.get("ASSISTANT_CONFIG"):
        return Path(environ["ASSISTANT_CONFIG"]).expanduser()
    base = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "assistant" / "config.toml"


def _read_config(config: str | Path | None, environ: typing.Mapping[str, str]) -> dict[str, Any]:
    explicit = config is not None or bool(environ.get("ASSISTANT_CONFIG"))
    path = Path(config).expanduser() if config is not None else default_config_path(environ)
    if not path.exists():
        if explicit:
            raise SettingsError(f"config file {path} does not exist; fix the path or leave --config out")
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}; fix it or move it away") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # [sampling], [retrieval], [server] tables: keys as at top level
            flat.update(value)
        else:
            flat[key] = value
    unknown = sorted(k for k in flat if k not in _FIELD_TYPES)
    if unknown:
        raise SettingsError(f"unknown key(s) {unknown} in {path}; known: {sorted(_FIELD_TYPES)}")
    return flat


def _read_env(environ: typing.Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name in _FIELD_TYPES:
        value = environ.get("ASSISTANT_" + name.upper())
        if value is not None and value != "":
            out[name] = value
    return out


def _base_type(name: str) -> type:
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint


def _convert(name: str, value: Any) -> Any:
    """Coerce a value from TOML / env / CLI to the field's type; SettingsError when impossible."""
    if name not in _FIELD_TYPES:
        raise SettingsError(f"unknown setting {name!r}; known: {sorted(_FIELD_TYPES)}")
    if value is None:
        return None
    kind = _base_type(name)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if kind is Path:
            return Path(str(value)).expanduser()
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"bad value for setting {name}: {exc}") from None


# ---------------------------------------------------------------------- CLI flags
def add_arguments(parser: Any, *, source: bool = True, model: bool = True, sampling: bool = True) -> None:
    """Add the settings flags shared by ask/chat/ui/eval. Every flag defaults to None = "not given", so
    config file and environment values survive unless a flag is passed."""
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default ~/.config/assistant/config.toml)")
    if source:
        group = parser.add_argument_group("documents")
        group.add_argument("--folder", metavar="DIR", help="documents folder (synced before answering)")
        group.add_argument("--index", metavar="PATH", help="index path (default: next to the folder's index cache)")
        group.add_argument("-k", "--k", dest="k", type=int, metavar="N", help="passages given to the model (default 4)")
        group.add_argument("--retrieval-mode", choices=RETRIEVAL_MODES, help="hybrid (default), dense or lexical")
        group.add_argument("--hybrid-fusion", choices=FUSIONS,
                           help="convex (default): 0.75 x dense + 0.25 x BM25, both standardised over the candidates; "
                                "rrf: reciprocal-rank fusion of the two lists (the fusion before 2026-12-04)")
        group.add_argument("--rerank", type=int, metavar="N",
                           help="rescore the top N retrieved passages with the cross-encoder reranker (0 = off, "
                                "the default; see docs/benchmarks.md)")
        group.add_argument("--reranker", metavar="DIR", help="cross-encoder folder (default assistant/data/reranker)")
        group.add_argument("--rerank-mode", choices=RERANK_MODES,
                           help="rrf (default): fuse the reranker's order with the retriever's; replace: its order "
                                "alone")
        group.add_argument("--no-adapt", dest="use_adapt", action="store_const", const=False,
                           help="an index adapted with `assistant adapt` goes back to the bundled encoder's vectors "
                                "(kept in the index: nothing is embedded again but chunks added since); "
                                "`assistant adapt --on` switches back")
        group.add_argument("--refusal-threshold", type=float, metavar="COS",
                           help="refuse when the best passage's cosine similarity is below this")
    if model:
        group = parser.add_argument_group("model")
        group.add_argument("--generator", metavar="SPEC", help="generator weights: .gguf file, HF folder or id")
        group.add_argument("--encoder", metavar="SPEC", help="encoder weights folder or id")
        group.add_argument("--adapter", metavar="DIR", help="LoRA adapter folder (default assistant/data/adapter)")
        group.add_argument("--no-adapter", dest="use_adapter", action="store_const", const=False,
                           help="run the base model without the fine-tuned adapter")
        group.add_argument("--answer-mode", choices=ANSWER_MODES,
                           help="guided (default): the reader finds the evidence, the generator words it, a check "
                                "keeps it true; extract: the evidence itself; generate: the generator alone")
        group.add_argument("--reader", metavar="DIR", help="evidence reader folder (default assistant/data/reader)")
        group.add_argument("--no-reader", dest="use_reader", action="store_const", const=False,
                           help="no evidence reader: the generator answers from the passages alone")
        group.add_argument("--reader-threshold", type=float, metavar="SCORE",
                           help="refuse when the evidence's support (reader score + overlap) is below this (default: "
                                f"{DEFAULT_READER_THRESHOLD})")
        group.add_argument("--no-open-answers", dest="open_answers", action="store_const", const=False,
                           help="explanations, lists, comparisons and summaries go to the generator instead of "
                                "being composed of cited sentences")
        group.add_argument("--open-rewrite", dest="open_rewrite", action="store_const", const=True,
                           help="the generator rewords composed answers; each sentence it writes is checked against "
                                "the evidence (off by default)")
        group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
        group.add_argument("--quantize", choices=["auto", "none", "int8", "int4"],
                           help="weight-only quantised generator (default auto: int4 on CPU for a Q4 GGUF)")
        group.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")
    if sampling:
        group = parser.add_argument_group("sampling")
        group.add_argument("--temperature", type=float, help="0 = greedy (default)")
        group.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = off)")
        group.add_argument("--top-p", type=float, help="nucleus sampling mass (1 = off)")
        group.add_argument("--min-p", type=float, help="drop tokens below min_p x the top probability")
        group.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeats, also of passage words (default 1.0)")
        group.add_argument("--frequency-penalty", type=float)
        group.add_argument("--presence-penalty", type=float)
        group.add_argument("--no-repeat-ngram-size", type=int)
        group.add_argument("--max-new-tokens", type=int, help="answer length limit in tokens (default 160)")
        group.add_argument("--seed", type=int, help="random seed for sampling")
        group.add_argument("--num-beams", type=int, help="beam search width (1 = off)")
        group.add_argument("--length-penalty", type=float)


def from_args(args: Any, **extra: Any) -> Settings:
    """Settings from defaults < config < env < the flags in an argparse namespace (< `extra`)."""
    values = {name: getattr(args, name, None) for name in _FIELD_TYPES}
    values.update({k: v for k, v in extra.items() if v is not None})
    settings = Settings.load(values, config=getattr(args, "config", None))
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    return settings
