"""Encoder initialisation: a local checkpoint directory written by the test (a tiny random BERT saved with
transformers), corrupted ones, the pip-installed all-MiniLM-L6-v2 with its hash, a hub id without internet, and
training from a checkpoint through Ray Train + DeepSpeed on the real Magazine data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from prefmine.text.checkpoint import (
    MINILM_SHA256,
    InitCheckpointError,
    file_sha256,
    load_bert_config,
    load_bert_state,
    load_tokenizer,
    resolve_init,
)
from prefmine.text.encoder import embed_texts


@pytest.fixture(scope="module")
def item_texts(magazine5):
    return list(pd.read_parquet(magazine5 / "items.parquet")["text"])


def test_local_checkpoint_directory_is_verified_and_loaded(tmp_path, item_texts, tiny_bert_dir):
    d = tiny_bert_dir(tmp_path / "ckpt", item_texts)
    ck = resolve_init(str(d))
    assert ck.source == "directory" and ck.weights.name == "model.safetensors"
    assert resolve_init(str(d), ck.sha256).sha256 == file_sha256(ck.weights)
    tok, cfg, state = load_tokenizer(ck), load_bert_config(ck), load_bert_state(ck)
    assert cfg.hidden_size == 32 and len(tok) == cfg.vocab_size
    assert all(k.startswith("bert.") for k in state)
    from transformers import BertModel

    direct = BertModel.from_pretrained(str(d), add_pooling_layer=False)
    assert torch.equal(state["bert.embeddings.word_embeddings.weight"], direct.embeddings.word_embeddings.weight)

    with pytest.raises(InitCheckpointError, match=r"model.safetensors: sha256 [0-9a-f]{64} does not match"):
        resolve_init(str(d), "0" * 64)
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    with open(broken / "model.safetensors", "r+b") as f:  # flip bytes in the middle of the weights
        f.seek(4000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(InitCheckpointError, match="does not match"):
        resolve_init(str(broken), ck.sha256)
    (broken / "model.safetensors").unlink()
    with pytest.raises(InitCheckpointError, match=r"broken: missing weights"):
        resolve_init(str(broken))
    shutil.copy(d / "model.safetensors", broken / "model.safetensors")
    for name in ("tokenizer.json", "vocab.txt"):
        (broken / name).unlink()
    with pytest.raises(InitCheckpointError, match="missing tokenizer"):
        resolve_init(str(broken))
    cfg_json = json.loads((d / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg_json, "model_type": "gpt2"}))
    with pytest.raises(InitCheckpointError, match="not BERT-family"):
        resolve_init(str(broken))
    with pytest.raises(InitCheckpointError, match="does not exist"):
        resolve_init(str(tmp_path / "nowhere"))


def test_minilm_from_the_pip_package_offline_with_its_hash():
    ck = resolve_init("minilm")
    assert ck.sha256 == MINILM_SHA256 and ck.source.startswith("package:")
    cfg = load_bert_config(ck)
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (6, 384)
    from transformers import BertModel

    model = BertModel.from_pretrained(str(ck.path), add_pooling_layer=False)
    tok = load_tokenizer(ck)
    e = embed_texts(model, tok, ["knitting patterns magazine", "crochet and yarn craft magazine",
                                 "car engine repair manual"], max_len=32)
    # a real sentence encoder: the two craft titles are closer to each other than to the car manual
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1 and e[0] @ e[1] > e[1] @ e[2] + 0.1


def test_hub_id_without_internet_fails_with_a_clear_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InitCheckpointError, match=r"Hugging Face hub .*pass its local directory"):
        resolve_init("prajjwal1/bert-tiny-not-cached-here")


@pytest.mark.slow
def test_encoder_trains_from_a_checkpoint_through_ray_train_deepspeed(magazine5, ray_session, tmp_path,
                                                                      item_texts, tiny_bert_dir):
    from cluster.ds_train import DistConfig
    from cluster.train_encoder import train_encoder
    from prefmine.data.dataset import load_dataset
    from prefmine.text.encoder import EncoderConfig

    ds = load_dataset(magazine5, with_reviews=True)
    d = tiny_bert_dir(tmp_path / "ckpt", item_texts)
    # MLM only: the rating stage from a checkpoint is trained by the LoRA and MiniLM tests below (one Ray Train
    # run fewer here), both stages from scratch by the session's tiny bundle
    cfg = EncoderConfig(init=str(d), init_sha256=file_sha256(d / "model.safetensors"), mlm_epochs=3,
                        finetune_epochs=0, max_texts=1200, lr=1e-3, contrastive_epochs=0)
    m = train_encoder(ds, tmp_path / "bundle", cfg, DistConfig())
    assert m["init"]["source"] == "directory" and "rating_history" not in m
    mlm = [h["loss"] for h in m["mlm_history"]]
    assert mlm[-1] < mlm[0]
    enc = tmp_path / "bundle" / "encoder"
    emb = np.load(enc / "item_embeddings.npy")
    assert emb.shape == (ds.n_items, 32)
    from prefmine.text.runtime import EncoderRuntime

    rt = EncoderRuntime(tmp_path / "bundle")
    assert rt.dim == 32 and len(rt.tokenizer) == len(load_tokenizer(resolve_init(str(d))))
    np.testing.assert_allclose(rt.embed(list(ds.items["text"][:5])), emb[:5], atol=1e-5)


@pytest.mark.slow
def test_encoder_fine_tunes_minilm(magazine5, ray_session, tmp_path):
    from cluster.ds_train import DistConfig
    from cluster.train_encoder import train_encoder
    from prefmine.data.dataset import load_dataset
    from prefmine.text.encoder import EncoderConfig

    ds = load_dataset(magazine5, with_reviews=True)
    cfg = EncoderConfig(init="minilm", mlm_epochs=0, finetune_epochs=2, max_texts=256, max_len=48,
                        finetune_lr=5e-5, contrastive_epochs=0)
    m = train_encoder(ds, tmp_path / "bundle", cfg, DistConfig(deepspeed_config="zero2.json"))
    assert m["init"]["weights_sha256"] == MINILM_SHA256 and "mlm" not in m
    assert np.load(tmp_path / "bundle" / "encoder" / "item_embeddings.npy").shape == (ds.n_items, 384)
    hist = m["rating_history"]
    assert hist[-1]["heldout_rating_mae"] < hist[-1]["heldout_mean_baseline_mae"]


@pytest.mark.slow
def test_lora_fine_tuning_trains_adapters_only_and_merges_them(magazine5, ray_session, tmp_path, item_texts,
                                                              tiny_bert_dir):
    from transformers import BertModel

    from cluster.ds_train import DistConfig
    from cluster.train_encoder import train_encoder
    from prefmine.data.dataset import load_dataset
    from prefmine.text.encoder import EncoderConfig

    ds = load_dataset(magazine5, with_reviews=True)
    d = tiny_bert_dir(tmp_path / "ckpt", item_texts)
    cfg = EncoderConfig(init=str(d), mlm_epochs=0, finetune="lora", finetune_epochs=3, max_texts=1200,
                        finetune_lr=3e-3, lora_r=4, contrastive_epochs=0)
    m = train_encoder(ds, tmp_path / "bundle", cfg, DistConfig())
    ft = m["finetune"]
    assert ft["mode"] == "lora" and ft["trainable_parameters"] < 0.1 * ft["parameters"]
    rating = [h["loss"] for h in m["rating_history"]]
    assert rating[-1] < rating[0]
    before = BertModel.from_pretrained(str(d), add_pooling_layer=False).state_dict()
    after = BertModel.from_pretrained(str(tmp_path / "bundle" / "encoder"), add_pooling_layer=False).state_dict()
    assert set(after) == set(before)  # adapters merged: a plain BERT checkpoint, no peft keys
    frozen = [k for k in before if ".query." not in k and ".value." not in k]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["encoder.layer.0.attention.self.query.weight"],
                           after["encoder.layer.0.attention.self.query.weight"])
    # the adapters themselves reload with peft onto the starting weights and give the merged encoder
    from peft import PeftModel

    adapter = tmp_path / "bundle" / "encoder" / "lora" / "rating"
    assert (adapter / "adapter_config.json").is_file()
    base = BertModel.from_pretrained(str(d), add_pooling_layer=False)
    reloaded = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().state_dict()
    for k in after:
        torch.testing.assert_close(reloaded[k], after[k], rtol=1e-5, atol=1e-6, msg=k)
