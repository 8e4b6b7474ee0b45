"""The paper's encoder at full size: mHuBERT-147's architecture (HuBERT-base: 12 layers, 768
wide, conv_bias false, group-norm front end) with random weights, saved to a directory and
loaded from it as a user's downloaded copy would be. One gender run fine-tunes every weight on
CPU, scores, and its checkpoint loads back into the architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cltm.train import loop
from cltm.train.grid import RunSpec
from cltm.train.worker import Worker, WorkerSettings


@pytest.mark.slow
def test_a_full_size_encoder_fine_tunes_scores_and_its_checkpoint_loads(tmp_path,
                                                                        synthetic_subsets):
    from safetensors.torch import load_file
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False)
    assert (config.num_hidden_layers, config.hidden_size) == (12, 768)
    torch.manual_seed(0)
    HubertModel(config).save_pretrained(tmp_path / "mhubert")
    initial = HubertModel.from_pretrained(tmp_path / "mhubert").state_dict()
    assert sum(v.numel() for v in initial.values()) > 90e6  # about 95M parameters

    train = loop.TrainParams(lr=1e-5, weight_decay=0.0, grad_clip=1.0, epochs=1, batch_size=1,
                              precision="fp32", head_init="random", head_lr_scale=1.0,
                              encoder="finetune")
    worker = Worker(WorkerSettings(
        task="gender", task_module="cltm.tasks.gender", task_settings=None,
        subsets_dir=str(synthetic_subsets["gender"]),
        name_or_path=str(tmp_path / "mhubert"), random_init=None, init_seed=0, train=train,
        device="cpu", threads=2, checkpoints="self", checkpoints_dir=str(tmp_path / "models"),
        first_seed=0, probe_clips=0, probe_seed=0, fuse=1))
    record = worker.run(RunSpec("gender", "aa", "self", "aa", 0), "h")
    assert record["steps"] > 0 and np.isfinite(record["loss_final"])
    assert 0.0 <= record["score"] <= 1.0

    (checkpoint,) = (tmp_path / "models").iterdir()
    state = load_file(checkpoint)
    encoder = {k.removeprefix("encoder."): v for k, v in state.items()
               if k.startswith("encoder.")}
    model = HubertModel(config)
    model.load_state_dict(encoder, strict=True)  # every weight of the architecture is there
    assert any(k.startswith("head.") for k in state)
    moved = [k for k, v in model.state_dict().items()
             if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert len(moved) > 100  # fine-tuning trained the encoder, not only the head
