"""Subset selection and trials on synthetic release tables (no files, no audio)."""

from __future__ import annotations

import itertools
import logging
import pickle

import numpy as np
import pandas as pd
import pytest

from cltm.data.subsets import (
    CAPACITY_COLUMNS,
    MANIFEST_COLUMNS,
    TRIAL_COLUMNS,
    ShortLanguagesError,
    language_capacity,
    make_trials,
    select_gender,
    select_speaker,
)
from cltm.data.subsets import _sample_across as _sample_across  # the sampler's own property
from cltm.errors import CltmError

LANGS = ("aa", "bb", "cc")
GENDERS = ("male", "female")
# The data settings the selections take from params: every clip of the pool, no duration bounds.
OPEN = {"pool": "validated", "min_duration_s": None, "max_duration_s": None}
CURVE_OPEN = {**OPEN, "eval_max_per_language": None}
# ... and no language dropped, each language's D and D' from its own speakers.
SPEAKER_OPEN = {**OPEN, "drop_short": False, "shared_pool": False}
GENDER_OPEN = {**SPEAKER_OPEN, "eval_max_per_language": None}
SETTINGS = {select_gender: GENDER_OPEN, select_speaker: SPEAKER_OPEN}


def add_speaker(rows: list[dict], lang: str, speaker: str, gender: str, n: int, splits) -> None:
    for k in range(n):
        for split in splits:
            rows.append(
                {
                    "language": lang,
                    "split": split,
                    "clip": f"{speaker}_{k}.mp3",
                    "speaker": speaker,
                    "gender": gender,
                    "sentence": "",
                    "duration_s": 1.0 + k,
                }
            )


def make_table(langs=LANGS, pool_speakers: int = 12, test_speakers: int = 4) -> pd.DataFrame:
    """Per language and gender: pool speakers with 2-5 clips (every other one also in train),
    dev speakers, test speakers (their clips in validated too, as in Common Voice), and one
    speaker with unlabelled clips."""
    rows: list[dict] = []
    for lang in langs:
        for gender in GENDERS:
            for k in range(pool_speakers):
                splits = ("validated", "train") if k % 2 == 0 else ("validated",)
                add_speaker(rows, lang, f"{lang}-{gender}-p{k}", gender, 2 + k % 4, splits)
            for k in range(2):
                add_speaker(rows, lang, f"{lang}-{gender}-d{k}", gender, 4, ("validated", "dev"))
            for k in range(test_speakers):
                add_speaker(rows, lang, f"{lang}-{gender}-t{k}", gender, 3, ("validated", "test"))
        add_speaker(rows, lang, f"{lang}-nolabel", "", 6, ("validated", "test"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_table()


def role(manifest: pd.DataFrame, lang: str, name: str) -> pd.DataFrame:
    return manifest[(manifest["language"] == lang) & (manifest["role"] == name)]


def check_disjoint(manifest: pd.DataFrame, table: pd.DataFrame) -> None:
    held_out = set(table.loc[table["split"].isin(["dev", "test"]), "speaker"])
    for lang in manifest["language"].unique():
        d, dp, ev = (role(manifest, lang, r) for r in ("D", "D_prime", "eval"))
        assert not set(d["clip"]) & set(dp["clip"])
        assert not set(d["speaker"]) & set(dp["speaker"])
        train_speakers = set(d["speaker"]) | set(dp["speaker"])
        assert not train_speakers & set(ev["speaker"])
        assert not train_speakers & held_out
        assert not (set(d["clip"]) | set(dp["clip"])) & set(ev["clip"])
    per_speaker = manifest.groupby("speaker")["language"].nunique()
    assert (per_speaker == 1).all()


# --------------------------------------------------------------------------- gender


def test_gender_sizes_balance_and_columns(table: pd.DataFrame) -> None:
    manifest = select_gender(table, LANGS, 4, 2, seed=1, **GENDER_OPEN)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert set(manifest["language"]) == set(LANGS)
    for lang in LANGS:
        for name in ("D", "D_prime"):
            subset = role(manifest, lang, name)
            assert subset["gender"].value_counts().to_dict() == {"male": 4, "female": 4}
            assert (subset.groupby("speaker").size() == 2).all()
            assert subset.groupby("gender")["speaker"].nunique().to_dict() == {
                "male": 2,
                "female": 2,
            }
    check_disjoint(manifest, table)


def test_gender_manifest_is_sorted_and_labelled(table: pd.DataFrame) -> None:
    manifest = select_gender(table, LANGS, 4, 2, seed=1, **GENDER_OPEN)
    keys = ["language", "role", "speaker", "clip"]
    pd.testing.assert_frame_equal(manifest, manifest.sort_values(keys).reset_index(drop=True))
    assert set(manifest["role"]) == {"D", "D_prime", "eval"}
    assert set(manifest["gender"]) == {"male", "female"}  # unlabelled clips never chosen


def test_gender_eval_is_the_labelled_test_split(table: pd.DataFrame) -> None:
    manifest = select_gender(table, LANGS, 4, 2, seed=1, **GENDER_OPEN)
    for lang in LANGS:
        test = table[(table["language"] == lang) & (table["split"] == "test")]
        labelled = set(test.loc[test["gender"] != "", "clip"])
        assert set(role(manifest, lang, "eval")["clip"]) == labelled


def test_gender_eval_cap_is_balanced(table: pd.DataFrame) -> None:
    manifest = select_gender(table, LANGS, 4, 2, seed=1,
                             **{**GENDER_OPEN, "eval_max_per_language": 6})
    for lang in LANGS:
        ev = role(manifest, lang, "eval")
        assert ev["gender"].value_counts().to_dict() == {"male": 3, "female": 3}
    again = select_gender(table, LANGS, 4, 2, seed=1,
                          **{**GENDER_OPEN, "eval_max_per_language": 6})
    pd.testing.assert_frame_equal(manifest, again)


def test_same_seed_same_manifest_other_seed_other(table: pd.DataFrame) -> None:
    first = select_gender(table, LANGS, 4, 2, seed=7, **GENDER_OPEN)
    shuffled = table.sample(frac=1.0, random_state=3)  # row order must not matter
    pd.testing.assert_frame_equal(first, select_gender(shuffled, LANGS, 4, 2, seed=7,
                                                       **GENDER_OPEN))
    other = select_gender(table, LANGS, 4, 2, seed=8, **GENDER_OPEN)
    assert not first.equals(other)


def test_speaker_in_two_languages_is_excluded_everywhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows: list[dict] = []
    # A prolific pool speaker of aa who also has a test clip in bb, and a test speaker of aa
    # who also recorded for cc.
    add_speaker(rows, "aa", "both", "male", 5, ("validated",))
    add_speaker(rows, "bb", "both", "male", 3, ("validated", "test"))
    add_speaker(rows, "aa", "both-eval", "female", 3, ("validated", "test"))
    add_speaker(rows, "cc", "both-eval", "female", 3, ("validated",))
    table = pd.concat([make_table(), pd.DataFrame(rows)], ignore_index=True)
    with caplog.at_level(logging.INFO, logger="cltm.data.subsets"):
        manifest = select_gender(table, LANGS, 4, 2, seed=1, **GENDER_OPEN)
    assert not {"both", "both-eval"} & set(manifest["speaker"])
    assert "more than one selected language" in caplog.text
    assert "aa 2, bb 1, cc 1" in caplog.text
    check_disjoint(manifest, table)
    # With bb and cc not selected, both speakers are usable in aa again.
    alone = select_gender(table, ["aa"], 4, 2, seed=1, **GENDER_OPEN)
    assert "both-eval" in set(alone["speaker"])


def test_conflicting_gender_speaker_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    rows: list[dict] = []
    add_speaker(rows, "aa", "mixed", "male", 3, ("validated", "test"))
    rows[0] = {**rows[0], "gender": "female"}
    table = pd.concat([make_table(), pd.DataFrame(rows)], ignore_index=True)
    with caplog.at_level(logging.INFO, logger="cltm.data.subsets"):
        manifest = select_gender(table, LANGS, 4, 2, seed=1, **GENDER_OPEN)
    assert "mixed" not in set(manifest["speaker"])
    assert "labelled both male and female" in caplog.text


def test_excluding_a_clip_of_a_speaker_with_spare_clips(table: pd.DataFrame) -> None:
    before = select_gender(table, LANGS, 4, 2, seed=1, **GENDER_OPEN)
    pool_sizes = table[table["split"] == "validated"].groupby("speaker").size()
    train = before[before["role"] != "eval"]
    spare = train[train["speaker"].map(pool_sizes) > 2].iloc[0]
    after = select_gender(table, LANGS, 4, 2, seed=1, exclude={spare["clip"]}, **GENDER_OPEN)
    assert spare["clip"] not in set(after["clip"])
    others_before = before[before["speaker"] != spare["speaker"]].reset_index(drop=True)
    others_after = after[after["speaker"] != spare["speaker"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(others_before, others_after)
    mine = after[after["speaker"] == spare["speaker"]]
    assert len(mine) == 2
    assert set(mine["role"]) == {spare["role"]}


def test_excluding_a_clip_of_a_speaker_without_spare_clips(table: pd.DataFrame) -> None:
    pool_sizes = table[table["split"] == "validated"].groupby("speaker").size()
    for seed in range(50):
        before = select_gender(table, LANGS, 4, 2, seed=seed, **GENDER_OPEN)
        train = before[before["role"] != "eval"]
        tight = train[train["speaker"].map(pool_sizes) == 2]
        if len(tight):
            break
    victim = tight.iloc[0]
    after = select_gender(table, LANGS, 4, 2, seed=seed, exclude={victim["clip"]}, **GENDER_OPEN)
    gone = set(before["speaker"]) - set(after["speaker"])
    new = set(after["speaker"]) - set(before["speaker"])
    assert gone == {victim["speaker"]}
    assert len(new) == 1
    newcomer = after[after["speaker"].isin(new)]
    assert set(newcomer["role"]) == {victim["role"]}
    assert set(newcomer["gender"]) == {victim["gender"]}
    assert set(newcomer["language"]) == {victim["language"]}
    changed = {victim["speaker"], *new}
    unchanged_before = before[~before["speaker"].isin(changed)].reset_index(drop=True)
    unchanged_after = after[~after["speaker"].isin(changed)].reset_index(drop=True)
    pd.testing.assert_frame_equal(unchanged_before, unchanged_after)


def test_excluded_clips_leave_evaluation_too(table: pd.DataFrame) -> None:
    before = select_gender(table, LANGS, 4, 2, seed=1, **GENDER_OPEN)
    clip = role(before, "aa", "eval")["clip"].iloc[0]
    after = select_gender(table, LANGS, 4, 2, seed=1, exclude=frozenset({clip}), **GENDER_OPEN)
    assert clip not in set(after["clip"])
    assert len(after) == len(before) - 1


def test_train_pool_option(table: pd.DataFrame) -> None:
    manifest = select_gender(table, LANGS, 4, 2, seed=1, **{**GENDER_OPEN, "pool": "train"})
    train_clips = set(table.loc[table["split"] == "train", "clip"])
    chosen = manifest[manifest["role"] != "eval"]
    assert set(chosen["clip"]) <= train_clips
    check_disjoint(manifest, table)
    with pytest.raises(CltmError, match="Unknown training pool"):
        select_gender(table, LANGS, 4, 2, seed=1, **{**GENDER_OPEN, "pool": "other"})


def test_duration_filter(table: pd.DataFrame) -> None:
    unknown = table.assign(
        duration_s=table["duration_s"].where(table["clip"] != "aa-male-t0_2.mp3")
    )
    manifest = select_gender(unknown, LANGS, 2, 1, seed=1,
                             **{**GENDER_OPEN, "max_duration_s": 2.0})
    assert (manifest["duration_s"].dropna() <= 2.0).all()
    # An unknown duration passes here; the subsets stage measures it (test_old_release.py).
    assert "aa-male-t0_2.mp3" in set(manifest["clip"])
    long = select_gender(table, LANGS, 2, 1, seed=1, **{**GENDER_OPEN, "min_duration_s": 2.0})
    assert (long["duration_s"] >= 2.0).all()


def test_n_not_multiple_of_clips_per_speaker(table: pd.DataFrame) -> None:
    with pytest.raises(CltmError, match=r"tasks\.gender\.N \(5\).*clips_per_speaker \(2\)"):
        select_gender(table, LANGS, 5, 2, seed=1, **GENDER_OPEN)
    with pytest.raises(CltmError, match=r"tasks\.speaker\.N \(7\).*clips_per_speaker \(2\)"):
        select_speaker(table, LANGS, 7, 2, seed=1, **SPEAKER_OPEN)
    with pytest.raises(CltmError, match="even"):
        select_speaker(table, LANGS, 6, 2, seed=1, **SPEAKER_OPEN)


def short_table() -> pd.DataFrame:
    # aa is fine; bb has too few pool speakers, cc too few and no female test clip.
    full = make_table(["aa"])
    bb = make_table(["bb"], pool_speakers=3)
    cc = make_table(["cc"], pool_speakers=2)
    cc = cc[~((cc["split"] == "test") & (cc["gender"] == "female"))]
    return pd.concat([full, bb, cc], ignore_index=True)


def test_short_languages_are_all_listed() -> None:
    with pytest.raises(ShortLanguagesError) as info:
        select_gender(short_table(), LANGS, 4, 2, seed=1, **GENDER_OPEN)
    error = info.value
    assert isinstance(error, CltmError)
    assert [s.language for s in error.short] == ["bb", "cc"]
    message = str(error)
    assert "bb: gender: 4 male speakers with >= 2 clips in the training pool (has 3)" in message
    assert "cc: gender: 4 male speakers" in message
    assert "gender eval: >= 1 female clip in the test split" in message
    assert "tasks.gender.N" in message
    assert "data.drop_short_languages: true" in message
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == message
    assert clone.short == error.short


def test_drop_short_languages(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cltm.data.subsets"):
        manifest = select_gender(short_table(), LANGS, 4, 2, seed=1,
                                 **{**GENDER_OPEN, "drop_short": True})
    assert set(manifest["language"]) == {"aa"}
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "bb (" in warning[0]
    assert "cc (" in warning[0]
    # The kept language's subsets are those it gets when every language is fine.
    alone = select_gender(short_table(), ["aa"], 4, 2, seed=1, **GENDER_OPEN)
    pd.testing.assert_frame_equal(manifest, alone)


def test_all_languages_short_raises_even_when_dropping() -> None:
    with pytest.raises(ShortLanguagesError, match="leaves none") as info:
        select_gender(short_table(), ["bb", "cc"], 4, 2, seed=1,
                      **{**GENDER_OPEN, "drop_short": True})
    assert len(info.value.short) == 2


def test_short_languages_in_the_speaker_task() -> None:
    with pytest.raises(ShortLanguagesError, match=r"bb: speaker: 4 male") as info:
        select_speaker(short_table(), LANGS, 8, 2, seed=1, **SPEAKER_OPEN)
    assert [s.language for s in info.value.short] == ["bb", "cc"]
    assert "tasks.speaker.N" in str(info.value)


# --------------------------------------------------------------------------- speaker


def test_speaker_sizes_and_gender_balance(table: pd.DataFrame) -> None:
    manifest = select_speaker(table, LANGS, 8, 2, seed=1, **SPEAKER_OPEN)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    for lang in LANGS:
        for name in ("D", "D_prime"):
            subset = role(manifest, lang, name)
            assert len(subset) == 8
            assert (subset.groupby("speaker").size() == 2).all()
            speakers = subset.drop_duplicates("speaker")["gender"].value_counts().to_dict()
            assert speakers == {"male": 2, "female": 2}
        test = table[(table["language"] == lang) & (table["split"] == "test")]
        assert set(role(manifest, lang, "eval")["clip"]) == set(
            test.loc[test["gender"] != "", "clip"]
        )
    check_disjoint(manifest, table)


def test_speaker_and_gender_tasks_choose_independently(table: pd.DataFrame) -> None:
    gender = select_gender(table, LANGS, 4, 2, seed=1, **GENDER_OPEN)
    speaker = select_speaker(table, LANGS, 8, 2, seed=1, **SPEAKER_OPEN)
    assert set(gender.loc[gender["role"] == "D", "clip"]) != set(
        speaker.loc[speaker["role"] == "D", "clip"]
    )


def test_speaker_selection_is_deterministic(table: pd.DataFrame) -> None:
    first = select_speaker(table, LANGS, 8, 2, seed=3, **SPEAKER_OPEN)
    pd.testing.assert_frame_equal(first, select_speaker(table, LANGS, 8, 2, seed=3, **SPEAKER_OPEN))
    assert not first.equals(select_speaker(table, LANGS, 8, 2, seed=4, **SPEAKER_OPEN))


def test_language_capacity_agrees_with_selection() -> None:
    capacity = language_capacity(
        short_table(), LANGS, gender_N=4, gender_cps=2, speaker_N=8, speaker_cps=2, **OPEN
    )
    assert tuple(capacity.columns) == CAPACITY_COLUMNS
    assert capacity["language"].tolist() == list(LANGS)
    assert capacity["gender_ok"].tolist() == [True, False, False]
    assert capacity["speaker_ok"].tolist() == [True, False, False]
    aa = capacity.iloc[0]
    # 12 pool speakers per gender with 2-5 clips; dev and test speakers are not in the pool.
    assert aa["pool_speakers_male"] == 12
    assert aa["pool_clips_male"] == sum(2 + k % 4 for k in range(12))
    assert aa["test_speakers_female"] == 4
    assert aa["test_clips_female"] == 12
    assert aa["gender_eligible_male"] == 12
    assert aa["gender_needs"] == ""
    assert "has 3" in capacity.iloc[1]["gender_needs"]


# --------------------------------------------------------------------------- trials


def eval_manifest() -> pd.DataFrame:
    rows = []

    def add(lang: str, speaker: str, gender: str, n: int) -> None:
        for k in range(n):
            rows.append(
                {
                    "clip": f"{speaker}_{k:02d}.mp3",
                    "language": lang,
                    "speaker": speaker,
                    "gender": gender,
                    "role": "eval",
                    "duration_s": 1.0,
                }
            )

    for speaker, n in (("m1", 1), ("m2", 2), ("m3", 5), ("m4", 30)):
        add("aa", speaker, "male", n)
    for speaker in ("f1", "f2", "f3"):
        add("aa", speaker, "female", 3)
    add("bb", "lonely", "male", 4)  # one speaker: positives but no negatives
    manifest = pd.DataFrame(rows)
    training = manifest.head(3).assign(role="D", clip=lambda m: "train_" + m["clip"])
    return pd.concat([manifest, training], ignore_index=True)


def test_trials_labels_and_balance() -> None:
    manifest = eval_manifest()
    trials = make_trials(manifest, seed=0, max_pairs_per_speaker=20)
    assert tuple(trials.columns) == TRIAL_COLUMNS
    speaker = dict(zip(manifest["clip"], manifest["speaker"], strict=True))
    gender = dict(zip(manifest["clip"], manifest["gender"], strict=True))
    assert not trials["a"].str.startswith("train_").any()  # only eval rows are used
    same = trials["a"].map(speaker) == trials["b"].map(speaker)
    assert (same == (trials["label"] == 1)).all()
    assert (trials["a"].map(gender) == trials["gender"]).all()
    assert (trials["b"].map(gender) == trials["gender"]).all()
    counts = trials.groupby(["language", "gender", "label"]).size().to_dict()
    # aa male: m2 1 pair + m3 10 pairs + m4 capped at 20; aa female: 3 pairs per speaker.
    assert counts[("aa", "male", 1)] == counts[("aa", "male", 0)] == 31
    assert counts[("aa", "female", 1)] == counts[("aa", "female", 0)] == 9
    assert counts[("bb", "male", 1)] == 6
    assert ("bb", "male", 0) not in counts


def test_trials_cap_per_speaker() -> None:
    manifest = eval_manifest()
    trials = make_trials(manifest, seed=0, max_pairs_per_speaker=20)
    speaker = dict(zip(manifest["clip"], manifest["speaker"], strict=True))
    positives = trials[trials["label"] == 1]
    per_speaker = positives["a"].map(speaker).value_counts().to_dict()
    assert per_speaker == {"m2": 1, "m3": 10, "m4": 20, "f1": 3, "f2": 3, "f3": 3, "lonely": 6}


def test_trials_have_no_duplicates() -> None:
    trials = make_trials(eval_manifest(), seed=0, max_pairs_per_speaker=20)
    pairs = [frozenset(p) for p in zip(trials["a"], trials["b"], strict=True)]
    assert len(set(pairs)) == len(pairs)
    assert (trials["a"] != trials["b"]).all()


def test_trials_are_deterministic() -> None:
    manifest = eval_manifest()
    first = make_trials(manifest, seed=5, max_pairs_per_speaker=20)
    shuffled = manifest.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(first, make_trials(shuffled, seed=5, max_pairs_per_speaker=20))
    assert not first.equals(make_trials(manifest, seed=6, max_pairs_per_speaker=20))


def test_trials_warn_when_negatives_run_out(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cltm.data.subsets"):
        make_trials(eval_manifest(), seed=0, max_pairs_per_speaker=20)
    assert "bb, male speakers: only 0 negative trials" in caplog.text


def test_trials_take_every_negative_when_few_exist() -> None:
    rows = [
        {"clip": f"{s}_{k}", "language": "aa", "speaker": s, "gender": "female"}
        for s, n in (("x", 4), ("y", 1))
        for k in range(n)
    ]
    trials = make_trials(pd.DataFrame(rows), seed=0, max_pairs_per_speaker=200)
    assert (trials["label"] == 1).sum() == 6
    assert (trials["label"] == 0).sum() == 4  # x_k with y_0, all of them


def test_trials_from_a_selected_manifest(table: pd.DataFrame) -> None:
    manifest = select_speaker(table, LANGS, 8, 2, seed=1, **SPEAKER_OPEN)
    trials = make_trials(manifest, seed=0, max_pairs_per_speaker=200)
    for (_, _), group in trials.groupby(["language", "gender"]):
        assert (group["label"] == 1).sum() == (group["label"] == 0).sum() == 12
    assert np.array_equal(trials["label"].unique(), [1, 0])


def test_every_possible_pair_is_reachable() -> None:
    # The sampler must not leave some pairs out structurally: over a few seeds, every
    # cross-speaker pair of a small set shows up.
    rows = [
        {"clip": f"{s}_{k}", "language": "aa", "speaker": s, "gender": "male"}
        for s in ("p", "q", "r")
        for k in range(4)
    ]
    seen = set()
    for seed in range(60):
        trials = make_trials(pd.DataFrame(rows), seed=seed, max_pairs_per_speaker=3)
        negatives = trials[trials["label"] == 0]
        seen |= set(zip(negatives["a"], negatives["b"], strict=True))
    everyone = {
        (a, b) for a, b in itertools.combinations([r["clip"] for r in rows], 2) if a[0] != b[0]
    }
    assert seen == everyone


def test_negative_pairs_are_uniform_over_pairs() -> None:
    # With one speaker of 1 clip and two of 10, 20 of the 120 cross-speaker pairs involve the
    # lone clip; drawing the first clip uniformly instead would give it about 13%.
    rng = np.random.default_rng(0)
    sizes = np.array([1, 10, 10])
    starts = np.array([0, 1, 11])
    draws = [_sample_across(rng, starts, sizes, 1)[0] for _ in range(5000)]
    share = np.mean([i == 0 for i, _ in draws])
    assert share == pytest.approx(1 / 6, abs=0.02)


def test_eval_cap_below_two(table: pd.DataFrame) -> None:
    with pytest.raises(CltmError, match=r"tasks\.gender\.eval_max_per_language is 1"):
        select_gender(table, LANGS, 4, 2, seed=1, **{**GENDER_OPEN, "eval_max_per_language": 1})


# --------------------------------------------------------------------------- one draw per seed


@pytest.mark.parametrize("select", [select_gender, select_speaker])
def test_per_seed_draws_each_satisfy_the_design_and_share_the_evaluation(
    table: pd.DataFrame, select
) -> None:
    fixed = select(table, LANGS, 4, 2, seed=0, **SETTINGS[select])
    drawn = select(table, LANGS, 4, 2, seed=0, draws=[0, 1, 2], **SETTINGS[select])
    assert "draw" not in fixed.columns and list(drawn.columns) == [*MANIFEST_COLUMNS, "draw"]
    # evaluation is drawn once, the same as the fixed selection's, marked as every draw's
    ev = drawn[drawn["role"] == "eval"]
    assert set(ev["draw"]) == {-1}
    pd.testing.assert_frame_equal(ev.drop(columns="draw").reset_index(drop=True),
                                  fixed[fixed["role"] == "eval"].reset_index(drop=True))
    speakers = {}
    for draw in (0, 1, 2):
        one = drawn[drawn["draw"].isin([draw, -1])].drop(columns="draw")
        check_disjoint(one, table)
        for lang in LANGS:
            for name in ("D", "D_prime"):
                rows = role(one, lang, name)
                assert len(rows) == (8 if select is select_gender else 4)
                assert (rows.groupby("gender").size() == len(rows) // 2).all()
        speakers[draw] = frozenset(one.loc[one["role"] != "eval", "speaker"])
    # the draws differ (each seed trains on other speakers) and are reproducible
    assert len(set(speakers.values())) == 3
    pd.testing.assert_frame_equal(drawn, select(table, LANGS, 4, 2, seed=0, draws=[0, 1, 2],
                                                **SETTINGS[select]))
    # a draw does not depend on which other draws are made
    alone = select(table, LANGS, 4, 2, seed=0, draws=[1], **SETTINGS[select])
    pd.testing.assert_frame_equal(
        alone[alone["draw"] == 1].reset_index(drop=True),
        drawn[drawn["draw"] == 1].reset_index(drop=True))


# --------------------------------------------------------------------------- one shared pool


@pytest.mark.parametrize("select", [select_gender, select_speaker])
def test_shared_pool_deals_every_language_from_one_pool(table: pd.DataFrame, select) -> None:
    per_language = select(table, LANGS, 4, 2, seed=0, draws=[0, 1], **SETTINGS[select])
    shared = select(table, LANGS, 4, 2, seed=0, draws=[0, 1],
                    **{**SETTINGS[select], "shared_pool": True})
    assert list(shared.columns) == [*MANIFEST_COLUMNS, "draw", "locale"]
    # evaluation stays each language's own test split
    ev = shared[shared["role"] == "eval"]
    assert (ev["locale"] == ev["language"]).all()
    pd.testing.assert_frame_equal(
        ev.drop(columns="locale").reset_index(drop=True),
        per_language[per_language["role"] == "eval"].reset_index(drop=True))
    pool = table[table["split"] == "validated"].set_index("clip")["language"].to_dict()
    served_elsewhere = 0
    for draw in (0, 1):
        train = shared[(shared["draw"] == draw) & (shared["role"] != "eval")]
        # a clip lies where the release has it, whichever language it serves
        assert (train["clip"].map(pool) == train["locale"]).all()
        # the 2 subsets of 3 languages: 6 blocks with no speaker in common
        blocks = train.groupby(["language", "role"])["speaker"].apply(frozenset)
        assert len(blocks) == 2 * len(LANGS)
        assert sum(len(b) for b in blocks) == len(frozenset().union(*blocks))
        # the same sizes and balance as a language's own selection
        sizes = train.groupby(["language", "role", "gender"]).size()
        own = per_language[(per_language["draw"] == draw) & (per_language["role"] != "eval")]
        pd.testing.assert_series_equal(sizes, own.groupby(["language", "role", "gender"]).size())
        assert not set(train["speaker"]) & set(ev["speaker"])
        served_elsewhere += int((train["locale"] != train["language"]).sum())
    # dealt from the union, a subset mostly holds other languages' speakers (2 of 3 expected)
    assert served_elsewhere > len(shared[shared["role"] != "eval"]) / 3
    pd.testing.assert_frame_equal(
        shared, select(table, LANGS, 4, 2, seed=0, draws=[0, 1],
                       **{**SETTINGS[select], "shared_pool": True}))

