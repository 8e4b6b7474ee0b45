"""Any encoder of the wav2vec 2.0 family: padding-exact, loaded by path, run end to end."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig, Wav2Vec2FeatureExtractor

from cltm.errors import CltmError
from cltm.train import loop
from cltm.train.grid import RunSpec
from cltm.train.model import load_encoder
from cltm.train.worker import Worker
from tests.conftest import TINY_HUBERT
from tests.test_train import PARAMS, settings

# Each family, tiny and random, with both front ends where the family has them
# (data2vec-audio has per-frame LayerNorm only, and stacked positional convolutions).
FAMILIES = {
    "hubert-group": {"model_type": "hubert"},
    "wav2vec2-group": {"model_type": "wav2vec2"},
    "wav2vec2-layer": {"model_type": "wav2vec2", "feat_extract_norm": "layer",
                       "do_stable_layer_norm": True},
    "wavlm-group": {"model_type": "wavlm"},
    "wavlm-layer": {"model_type": "wavlm", "feat_extract_norm": "layer",
                    "do_stable_layer_norm": True},
    "data2vec-audio": {"model_type": "data2vec-audio", "num_conv_pos_embeddings": 3,
                       "conv_pos_kernel_size": 7},
}
NO_NOISE = {"mask_time_prob": 0.0, "layerdrop": 0.0, "hidden_dropout": 0.0,
            "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0}
CPU = torch.device("cpu")


def _config(name: str) -> dict:
    return {**TINY_HUBERT, **FAMILIES[name]}


def _waves() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=gen) for n in (16_000, 11_000, 7_000, 12_345)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_padded_batch_gives_each_clip_what_it_gets_alone(name):
    encoder, _ = load_encoder("unused", _config(name), init_seed=0)
    encoder.eval()
    waves = _waves()
    with torch.no_grad():
        for layers, stats in ((1, False), (4, True)):
            batched = loop.pooled(encoder, waves, CPU, True, last_layers=layers, stats=stats)
            alone = torch.cat([loop.pooled(encoder, [w], CPU, True, last_layers=layers,
                                            stats=stats) for w in waves])
            assert torch.allclose(batched, alone, atol=1e-4), (name, layers)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_padded_training_loss_is_the_mean_of_the_clips_losses(name):
    encoder, _ = load_encoder("unused", {**_config(name), **NO_NOISE}, init_seed=0)
    encoder.train()
    head = torch.nn.Linear(16, 2)
    waves, labels = _waves()[:3], torch.tensor([0, 1, 1])
    loss = torch.nn.functional.cross_entropy(head(loop.pooled(encoder, waves, CPU, True)),
                                             labels)
    singles = [torch.nn.functional.cross_entropy(head(loop.pooled(encoder, [w], CPU, True)),
                                                 labels[i : i + 1]) for i, w in enumerate(waves)]
    assert loss.item() == pytest.approx(torch.stack(singles).mean().item(), abs=1e-4)


@pytest.mark.parametrize("name", ["wav2vec2-layer", "wavlm-group", "data2vec-audio"])
def test_saved_encoder_loads_by_path_and_runs_a_grid_run(name, tmp_path, synthetic_subsets):
    built, _ = load_encoder("unused", _config(name), init_seed=0)
    built.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path)
    loaded, do_normalize = load_encoder(str(tmp_path), None, init_seed=0)
    assert type(loaded) is type(built) and not do_normalize
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(),
                                                 loaded.state_dict().values(), strict=True))
    for train in (PARAMS, replace(PARAMS, encoder="frozen", epochs=5)):
        w = Worker(settings("speaker", synthetic_subsets, name_or_path=str(tmp_path),
                            random_init=None, train=train))
        record = w.run(RunSpec("speaker", "aa", "self", "aa", 0), "h")
        assert 0.0 <= record["score"] <= 1.0 and record["steps"] >= 1


def test_unsupported_models_get_one_error_naming_the_supported(tmp_path):
    AutoConfig.for_model("whisper", d_model=16, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2,
                         encoder_ffn_dim=16, decoder_ffn_dim=16).save_pretrained(tmp_path)
    with pytest.raises(CltmError, match=r"'whisper' model.*hubert, wav2vec2, wavlm, "
                                        r"data2vec-audio"):
        load_encoder(str(tmp_path), None, init_seed=0)
    with pytest.raises(CltmError, match=r"model.random_init is a 'bert' model.*wav2vec 2.0"):
        load_encoder("unused", {"model_type": "bert"}, init_seed=0)


def test_a_checkpoint_at_another_sampling_rate_is_refused(tmp_path):
    built, _ = load_encoder("unused", _config("wavlm-group"), init_seed=0)
    built.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(sampling_rate=8000).save_pretrained(tmp_path)
    with pytest.raises(CltmError, match=r"expects audio at 8000 Hz.*16000 Hz"):
        load_encoder(str(tmp_path), None, init_seed=0)


def test_the_run_hash_and_mlflow_params_carry_the_architecture(tmp_path):
    import yaml

    from cltm.config import config_from_dict
    from tests.test_config import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["pretrain"]["enabled"] = False
    raw["model"]["random_init"] = {**TINY_HUBERT, "model_type": "wavlm"}
    from cltm.train.runner import settings_of

    assert settings_of(config_from_dict(raw), "gender")["architecture"] == "wavlm"
    raw["model"]["random_init"] = {**TINY_HUBERT, "model_type": "whisper"}
    with pytest.raises(CltmError, match=r"model\.random_init\.model_type is 'whisper'"):
        config_from_dict(raw)


@pytest.mark.parametrize("key", ["model.random_init", "pretrain.architecture"])
def test_model_type_is_required_where_config_overrides_are_given(key):
    """No encoder family is assumed: overrides without model_type fail at config validation,
    naming the key and the families there are."""
    import yaml

    from cltm.config import config_from_dict
    from tests.test_config import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["pretrain"]["enabled"] = False
    section, name = key.split(".")
    raw[section][name] = {k: v for k, v in TINY_HUBERT.items() if k != "model_type"}
    with pytest.raises(CltmError, match=rf"{re.escape(key)} needs model_type.*hubert, wav2vec2"):
        config_from_dict(raw)
