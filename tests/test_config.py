"""The config is validated once: every bad value gets one message naming the key."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from cltm.cli import main
from cltm.config import config_from_dict, load_config
from cltm.errors import CltmError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_demo_params_load(raw):
    config = config_from_dict(raw)
    assert config.data.source == "demo"
    assert len(config.data.languages) >= 6
    assert config.tasks["gender"].N == raw["tasks"]["gender"]["N"]
    assert config.train.seeds == raw["train"]["seeds"]
    assert isinstance(config.demo.family_trait_strength, float)


def test_paper_params_are_the_protocol(tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    raw["data"]["commonvoice"]["root"] = str(tmp_path)  # the real release is not here
    config = config_from_dict(raw)
    assert config.data.source == "commonvoice"
    assert config.tasks["gender"].N == 60
    assert config.tasks["speaker"].N == 1000
    assert config.train.seeds == list(range(42, 52))
    assert len(config.data.languages) >= 44


def _set(raw: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(raw)
    node = out
    *path, last = dotted.split(".")
    for k in path:
        node = node[k]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.sorce", "demo", r"unknown key data\.sorce"),
        ("tasks.gender.N", "eight",
         r"tasks\.gender\.N must be an integer or one of .auto., got str"),
        ("tasks.gender.N", True, r"tasks\.gender\.N must be an integer"),
        ("train.seeds", 3, r"train\.seeds must be a list of integers"),
        ("train.seeds", [1, "x"], r"train\.seeds\[1\] must be an integer"),
        ("train.seeds", [1, 1], r"train\.seeds has repeated seeds"),
        ("data.source", "cv", r"data\.source must be one of 'demo', 'commonvoice'"),
        ("data.languages", ["es"], r"data\.languages needs at least 2"),
        ("data.languages", ["es", "de", "es"], r"data\.languages lists es more than once"),
        ("tasks.gender.N", 7, r"tasks\.gender\.N \(7\) must be a multiple of"),
        ("tasks.speaker.N", 9, r"speakers per subset must be even"),
        ("tasks.speaker.N", _DELETE, r"missing key tasks\.speaker\.N"),
        ("train.head_lr_scale", 0, r"train\.head_lr_scale must be positive"),
        ("train.head_init", "xavier", r"train\.head_init must be one of 'random', 'zero'"),
        ("tasks.gender.head_lr_scale", -2.0, r"tasks\.gender\.head_lr_scale must be positive"),
        ("train.encoder", "thawed", r"train\.encoder must be one of 'finetune', 'frozen'"),
        ("tasks.speaker.encoder", "lora",
         r"tasks\.speaker\.encoder must be one of 'finetune', 'frozen'"),
        ("data.selection", "random", r"data\.selection must be one of 'fixed', 'per_seed'"),
        ("data.min_duration_s", 30.0, r"data\.min_duration_s .* must be below"),
    ],
)
def test_bad_values_name_the_key(raw, key, value, message):
    if key == "data.min_duration_s":
        raw = _set(raw, "data.max_duration_s", 10.0)
    with pytest.raises(CltmError, match=message):
        config_from_dict(_set(raw, key, value))


def test_shared_pool_needs_a_draw_per_seed(raw):
    raw = _set(_set(raw, "data.selection", "fixed"), "data.selection_pool", "shared")
    with pytest.raises(CltmError, match=r"selection_pool: shared .* set data\.selection: per_seed"):
        config_from_dict(raw)
    config_from_dict(_set(raw, "data.selection", "per_seed"))  # per_seed: accepted


def test_missing_release_root_says_where_to_get_it(raw, tmp_path):
    raw = _set(raw, "data.source", "commonvoice")
    raw = _set(raw, "data.commonvoice.root", str(tmp_path / "nope"))
    with pytest.raises(CltmError, match=r"not a directory.*commonvoice\.mozilla\.org"):
        config_from_dict(raw)


def test_missing_params_file(tmp_path):
    with pytest.raises(CltmError, match=r"params file not found"):
        load_config(tmp_path / "params.yaml")


def test_invalid_yaml(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(CltmError, match=r"not valid YAML"):
        load_config(p)


@pytest.mark.parametrize("key,value,message", [
    ("data.languages", ["es", "ckb"], r"cannot speak: ckb.*Supported.* es"),
    ("demo.family_trait_strength", 3.5, r"family_trait_strength must lie in \[0, 3\]"),
    ("demo.family_trait_strength", -1, r"family_trait_strength must lie in \[0, 3\]"),
    ("demo.test_speakers", -1, r"test_speakers cannot be negative"),
])
def test_the_demo_corpus_stage_checks_the_demo_settings(raw, tmp_path, capsys, key, value,
                                                         message):
    """The demo's own settings are the demo-corpus stage's to check (config.py does not import
    the corpus generator): the stage stops before writing anything, naming the setting."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_set(raw, key, value)))
    config_from_dict(_set(raw, key, value))  # a valid params file for every other stage
    assert main(["--params", str(params), "--no-progress", "demo-corpus", "--out",
                 str(tmp_path / "corpus")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "corpus").exists()


def test_exponent_floats_that_yaml_reads_as_strings_are_numbers(tmp_path, raw):
    # PyYAML (YAML 1.1) loads `lr: 1e-3` as the string "1e-3"; users write it that way.
    text = yaml.safe_dump(raw).replace("lr: 0.001", "lr: 1e-3")
    assert "lr: 1e-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_config(path).train.lr == pytest.approx(1e-3)
    with pytest.raises(CltmError, match=r"train\.lr must be a number, got str 'fast'"):
        config_from_dict(_set(raw, "train.lr", "fast"))


@pytest.mark.parametrize("variants,seeds,message", [
    ({"bad name": {}}, None, r"is not a usable name"),
    ({"x": {"family_trait_strength": 9}}, None,
     r"variants\.x\.family_trait_strength must lie in"),
    ({"x": {"strength": 1}}, None, r"unknown key variants\.x\.strength"),
    ({"x": {}}, [0, 0], r"calibration\.seeds has repeated seeds"),
])
def test_bad_calibration_params_name_the_key(tmp_path, variants, seeds, message):
    from cltm.config import load_calibration

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"variants": variants, "seeds": seeds}))
    with pytest.raises(CltmError, match=message):
        load_calibration(path)


def test_a_missing_key_is_an_error_that_names_it(raw):
    del raw["analysis"]["fdr"]
    with pytest.raises(CltmError, match=r"missing key analysis\.fdr .*configs/paper\.yaml"):
        config_from_dict(raw)
