"""Choose D_i, D'_i and the evaluation clips of every language, and the speaker trials.

Everything here is a pure function of the release table (cltm.data.commonvoice.read_release:
columns language, split, clip, speaker, gender, sentence, duration_s), the requested sizes and a
seed. The CLTM compares Perf_i(D_i + D'_i) with Perf_i(D_i + D_j), so D'_i and D_j must differ
only in their language: same sizes, same clips per speaker, same class balance, no speaker in
common, and no training speaker in the evaluation set.

Choices are made by ranking speakers and clips with a keyed hash (blake2b of
"seed|language|task|kind|id") instead of sequential random draws. A clip that fails to decode
(`exclude`) then only changes the choice of its own speaker (or the slot that speaker held),
and the rest of the selection stays as it was.

Manifest columns: MANIFEST_COLUMNS; role is "D", "D_prime" or "eval". With `draws` (one
selection per training seed) the manifest has a column `draw` too: the training seed whose D
and D' a row belongs to, ALL_DRAWS (-1) for the evaluation rows that every seed shares; a clip
can then appear once per draw.

With `shared_pool` (the calibration's exchangeable control) every language's D and D' are dealt
from the union of the languages' training speakers, so D'_i and D_j are drawn alike by
construction; the manifest then has a column `locale` too: where the clip lies in the release,
which for a training row need not be the `language` it serves.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cltm.errors import CltmError
from cltm.layout import ALL_DRAWS

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = ("clip", "language", "speaker", "gender", "role", "duration_s")
TRIAL_COLUMNS: tuple[str, ...] = ("a", "b", "label", "language", "gender")
CAPACITY_COLUMNS: tuple[str, ...] = (
    "language",
    "shared_speakers",
    "conflicting_speakers",
    "pool_speakers_male",
    "pool_speakers_female",
    "pool_clips_male",
    "pool_clips_female",
    "test_speakers_male",
    "test_speakers_female",
    "test_clips_male",
    "test_clips_female",
    "gender_eligible_male",
    "gender_eligible_female",
    "speaker_eligible_male",
    "speaker_eligible_female",
    "gender_ok",
    "speaker_ok",
    "gender_needs",
    "speaker_needs",
)
ROLES: tuple[str, ...] = ("D", "D_prime", "eval")
GENDERS: tuple[str, ...] = ("male", "female")
POOLS: tuple[str, ...] = ("validated", "train")
_TABLE_COLUMNS: tuple[str, ...] = ("language", "split", "clip", "speaker", "gender")
_HELD_OUT_SPLITS: tuple[str, ...] = ("dev", "test")
# Past this many candidate pairs per wanted pair, rejection sampling beats enumerating them all.
_DENSE_FACTOR = 3


@dataclass(frozen=True)
class ShortLanguage:
    """A language that cannot fill the requested subsets, and what it lacks."""

    language: str
    needs: str


class ShortLanguagesError(CltmError):
    """Some languages lack the data for the requested subset sizes; `.short` lists them all."""

    def __init__(
        self, short: Sequence[ShortLanguage], task: str, *, none_left: bool = False
    ) -> None:
        self.short = list(short)
        self.task = task
        self.none_left = none_left
        super().__init__(_short_message(self.short, task, none_left))

    def __reduce__(self):  # keeps the error picklable (worker processes send it back)
        return (_rebuild_short_error, (self.short, self.task, self.none_left))


def _rebuild_short_error(
    short: list[ShortLanguage], task: str, none_left: bool
) -> ShortLanguagesError:
    return ShortLanguagesError(short, task, none_left=none_left)


def _short_message(short: list[ShortLanguage], task: str, none_left: bool) -> str:
    listed = "\n".join(f"  - {s.language}: {s.needs}" for s in short)
    head = f"Not enough data for the {task} task in {len(short)} language(s):\n{listed}\n"
    if none_left:
        return (
            head + "Leaving the short languages out leaves none. Fix: lower "
            f"tasks.{task}.N or tasks.{task}.clips_per_speaker, or choose other languages."
        )
    return (
        head + f"Fix: lower tasks.{task}.N or tasks.{task}.clips_per_speaker, remove these "
        "languages from the configuration, or set data.drop_short_languages: true to leave "
        "them out."
    )


# --------------------------------------------------------------------------- public API


def select_gender(
    table: pd.DataFrame,
    languages: Sequence[str],
    N: int,
    clips_per_speaker: int,
    *,
    seed: int,
    eval_max_per_language: int | None,
    pool: str,
    exclude: Collection[str] = frozenset(),
    drop_short: bool,
    min_duration_s: float | None,
    max_duration_s: float | None,
    draws: Sequence[int] | None = None,
    shared_pool: bool,
) -> pd.DataFrame:
    """Gender-recognition manifest: per language N male + N female clips in D and in D'.

    Each subset takes `clips_per_speaker` clips from each of N / clips_per_speaker speakers
    per class; evaluation is the language's labelled test split (optionally capped, balanced).
    `draws`: draw D and D' once per listed training seed (see the module's docstring);
    `shared_pool`: deal them from every language's speakers (ditto).
    """
    per_lane = _speakers_per_subset("gender", N, clips_per_speaker)
    _check_eval_cap(eval_max_per_language)
    pools = _prepare(table, languages, pool, exclude, min_duration_s, max_duration_s)
    short = _collect_short(
        pools, lambda lang: _gender_needs(pools, lang, per_lane, clips_per_speaker)
    )
    kept = _resolve_short(short, pools.languages, "gender", drop_short)
    parts = _training_parts(pools, kept, "gender", per_lane, clips_per_speaker, seed, draws,
                            shared_pool)
    for language in kept:
        evaluation = _gender_eval(pools.of(language)[1], language, seed, eval_max_per_language)
        parts.append(_with_role(evaluation, "eval", None if draws is None else ALL_DRAWS))
    return _manifest(parts, shared_pool)


def select_speaker(
    table: pd.DataFrame,
    languages: Sequence[str],
    N: int,
    clips_per_speaker: int,
    *,
    seed: int,
    pool: str,
    exclude: Collection[str] = frozenset(),
    drop_short: bool,
    min_duration_s: float | None,
    max_duration_s: float | None,
    draws: Sequence[int] | None = None,
    shared_pool: bool,
) -> pd.DataFrame:
    """Speaker manifest: per language N clips in D and in D' (new speakers), half per gender.

    Each subset holds N / clips_per_speaker speakers, half male and half female, with
    `clips_per_speaker` clips each; evaluation is every labelled clip of the test split.
    `draws`: draw D and D' once per listed training seed (see the module's docstring);
    `shared_pool`: deal them from every language's speakers (ditto).
    """
    per_subset = _speakers_per_subset("speaker", N, clips_per_speaker)
    if per_subset % 2:
        raise CltmError(
            f"tasks.speaker.N / clips_per_speaker = {N} / {clips_per_speaker} = {per_subset} "
            "speakers per subset, which cannot be split evenly between male and female "
            "speakers. Choose N and clips_per_speaker so that N / clips_per_speaker is even."
        )
    per_lane = per_subset // 2
    pools = _prepare(table, languages, pool, exclude, min_duration_s, max_duration_s)
    short = _collect_short(
        pools, lambda lang: _speaker_needs(pools, lang, per_lane, clips_per_speaker)
    )
    kept = _resolve_short(short, pools.languages, "speaker", drop_short)
    parts = _training_parts(pools, kept, "speaker", per_lane, clips_per_speaker, seed, draws,
                            shared_pool)
    for language in kept:
        parts.append(_with_role(pools.of(language)[1], "eval",
                                None if draws is None else ALL_DRAWS))
    return _manifest(parts, shared_pool)


def _training_parts(pools: _Pools, kept: Sequence[str], task: str, per_lane: int, cps: int,
                    seed: int, draws: Sequence[int] | None,
                    shared_pool: bool) -> list[pd.DataFrame]:
    """D and D' of every kept language and draw, per_lane speakers of each gender in each."""
    parts: list[pd.DataFrame] = []
    if shared_pool:
        train = pools.train[pools.train["language"].isin(kept)]
        for draw, prefix in _prefixes(seed, "shared", task, draws):
            for gender in GENDERS:
                blocks = _deal(_of_gender(train, gender), len(kept), per_lane, cps, prefix)
                for k, rows in enumerate(blocks):
                    role = "D" if k % 2 == 0 else "D_prime"
                    served = rows.assign(locale=rows["language"], language=kept[k // 2])
                    parts.append(_with_role(served, role, draw))
        return parts
    for language in kept:
        train = pools.of(language)[0]
        for draw, prefix in _prefixes(seed, language, task, draws):
            for gender in GENDERS:
                d, d_prime = _draw(_of_gender(train, gender), per_lane, cps, prefix)
                parts += [_with_role(d, "D", draw), _with_role(d_prime, "D_prime", draw)]
    return parts


def select_curve(
    table: pd.DataFrame,
    languages: Sequence[str],
    task: str,
    N_grid: Sequence[int],
    clips_per_speaker: int,
    *,
    seed: int,
    eval_max_per_language: int | None,
    pool: str,
    exclude: Collection[str] = frozenset(),
    min_duration_s: float | None,
    max_duration_s: float | None,
) -> pd.DataFrame:
    """Learning-curve manifest: nested training sets for every N of the grid, and the eval set.

    Per language and gender the eligible speakers are ranked by hash; D^(N) holds the
    best-ranked N / clips_per_speaker speakers per class (gender) or N / (2 clips_per_speaker)
    per gender (speaker). So D^(N) is a subset of D^(2N), and a curve measures more data, not
    other data. Training rows have role "D" and a column `min_n`, the smallest N that includes
    them; evaluation rows are the task's evaluation set (`min_n` 0).
    """
    if task not in ("gender", "speaker"):
        raise CltmError(f"unknown task {task!r}; expected gender or speaker")
    per_gender = max(N_grid) // clips_per_speaker // (2 if task == "speaker" else 1)
    pools = _prepare(table, languages, pool, exclude, min_duration_s, max_duration_s)
    short = _collect_short(
        pools, lambda lang: _curve_needs(pools, lang, task, per_gender, clips_per_speaker)
    )
    _resolve_short(short, pools.languages, task, drop_short=False)
    parts: list[pd.DataFrame] = []
    for language in pools.languages:
        train, test = pools.of(language)
        prefix = f"{seed}|{language}|{task}-curve|"
        for gender in GENDERS:
            rows, rank = _ranked_speakers(_of_gender(train, gender), clips_per_speaker, prefix,
                                          per_gender)
            scale = clips_per_speaker * (2 if task == "speaker" else 1)
            parts.append(_with_role(rows, "D").assign(min_n=(rank + 1) * scale))
        if task == "gender":
            evaluation = _gender_eval(test, language, seed, eval_max_per_language)
        else:
            evaluation = test
        parts.append(_with_role(evaluation, "eval").assign(min_n=0))
    manifest = pd.concat(parts, ignore_index=True)
    manifest = manifest.sort_values(["language", "role", "speaker", "clip"], kind="stable")
    return manifest.reset_index(drop=True).astype({"duration_s": float, "min_n": int})


def _ranked_speakers(
    rows: pd.DataFrame, clips_per_speaker: int, prefix: str, k: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """The first `clips_per_speaker` clips of the k best-ranked eligible speakers, and each
    row's speaker rank (0 = best)."""
    first, eligible = _first_clips(rows, clips_per_speaker, prefix)
    order = pd.DataFrame({"speaker": eligible, "key": _hash_keys(f"{prefix}speaker|", eligible)})
    chosen = order.sort_values(["key", "speaker"], kind="stable")["speaker"].head(k).tolist()
    rank_of = {speaker: r for r, speaker in enumerate(chosen)}
    first = first[first["speaker"].isin(rank_of)]
    return first, first["speaker"].map(rank_of).to_numpy()


def _curve_needs(pools: _Pools, language: str, task: str, per_gender: int, cps: int) -> str:
    train, test = pools.of(language)
    needs = []
    for gender in GENDERS:
        has = _eligible_speakers(_of_gender(train, gender), cps)
        if has < per_gender:
            needs.append(f"curve: {per_gender} {gender} speakers with >= {cps} clips in the "
                         f"training pool for the largest N of curve.N_grid.{task} (has {has})")
    if task == "speaker" and not any(_can_make_trials(_of_gender(test, g)) for g in GENDERS):
        needs.append("speaker eval: 2 test speakers of one gender, one with >= 2 clips")
    if task == "gender":
        needs += [f"gender eval: >= 1 {g} clip in the test split (has 0)" for g in GENDERS
                  if not (test["gender"] == g).any()]
    return "; ".join(needs)


def make_trials(
    manifest_eval: pd.DataFrame, *, seed: int, max_pairs_per_speaker: int
) -> pd.DataFrame:
    """Verification trials (TRIAL_COLUMNS) from the speaker manifest's eval rows.

    Per language and gender: for each speaker with >= 2 clips all pairs of their clips (at most
    `max_pairs_per_speaker`, sampled), then as many negatives, each two clips of two different
    speakers of that gender. No pair appears twice, in either order.
    """
    if max_pairs_per_speaker < 1:
        raise ValueError(f"max_pairs_per_speaker must be >= 1, got {max_pairs_per_speaker}")
    rows = _eval_rows(manifest_eval)
    parts = [
        _trials_of_group(group, str(language), str(gender), seed, max_pairs_per_speaker)
        for (language, gender), group in rows.groupby(["language", "gender"], sort=True)
    ]
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty_trials()
    trials = pd.concat(parts, ignore_index=True)
    trials = trials.sort_values(
        ["language", "gender", "label", "a", "b"], ascending=[True, True, False, True, True]
    )
    return trials.reset_index(drop=True)


def language_capacity(
    table: pd.DataFrame,
    languages: Sequence[str],
    *,
    gender_N: int,
    gender_cps: int,
    speaker_N: int,
    speaker_cps: int,
    pool: str,
    exclude: Collection[str] = frozenset(),
    min_duration_s: float | None,
    max_duration_s: float | None,
) -> pd.DataFrame:
    """Per language: what the training pool and test split hold, and whether each task fits.

    Uses the same rules as select_gender / select_speaker, so `gender_ok` is True exactly
    when select_gender would not find the language short (likewise `speaker_ok`).
    """
    gender_lane = _speakers_per_subset("gender", gender_N, gender_cps)
    speaker_lane = _speakers_per_subset("speaker", speaker_N, speaker_cps) // 2
    pools = _prepare(table, languages, pool, exclude, min_duration_s, max_duration_s)
    records = []
    for language in pools.languages:
        train, test = pools.of(language)
        gender_needs = _gender_needs(pools, language, gender_lane, gender_cps)
        speaker_needs = _speaker_needs(pools, language, speaker_lane, speaker_cps)
        record = {
            "language": language,
            "shared_speakers": pools.shared.get(language, 0),
            "conflicting_speakers": pools.conflicting.get(language, 0),
        }
        for gender in GENDERS:
            record |= _counts(
                _of_gender(train, gender), _of_gender(test, gender), gender, gender_cps, speaker_cps
            )
        record |= {
            "gender_ok": not gender_needs,
            "speaker_ok": not speaker_needs,
            "gender_needs": gender_needs,
            "speaker_needs": speaker_needs,
        }
        records.append(record)
    return pd.DataFrame.from_records(records, columns=list(CAPACITY_COLUMNS))


# --------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class _Pools:
    """Labelled rows that may be chosen, after every exclusion rule."""

    languages: tuple[str, ...]
    train: pd.DataFrame  # the training pool
    test: pd.DataFrame  # the test split (evaluation)
    shared: dict[str, int]  # speakers dropped for appearing in several languages
    conflicting: dict[str, int]  # speakers dropped for contradictory gender labels

    def of(self, language: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        return (
            self.train[self.train["language"] == language],
            self.test[self.test["language"] == language],
        )


def _prepare(
    table: pd.DataFrame,
    languages: Sequence[str],
    pool: str,
    exclude: Collection[str],
    min_duration_s: float | None,
    max_duration_s: float | None,
) -> _Pools:
    _check_table(table)
    langs = tuple(dict.fromkeys(languages))
    if not langs:
        raise CltmError("No languages requested: list at least one language.")
    if pool not in POOLS:
        raise CltmError(f"Unknown training pool {pool!r}: choose one of {', '.join(POOLS)}.")
    rows = _rows_of(table, langs)
    rows, shared = _drop_shared_speakers(rows)
    # Held-out status is a property of the person, so it is taken from every row of theirs
    # (unlabelled, excluded or out-of-range ones too), not only from the usable ones.
    held_out = rows.loc[rows["split"].isin(_HELD_OUT_SPLITS), ["language", "speaker"]]
    # Only clips with a male/female label are used, for both tasks. Common Voice stores the
    # label per clip (the profile as it stood at recording time), the paper keeps "samples with
    # the required metadata", and borrowing a label from a speaker's other clips would guess.
    labelled = rows[rows["gender"].isin(GENDERS)]
    labelled, conflicting = _drop_conflicting_speakers(labelled)
    # Exclusions and duration limits apply to evaluation too: a clip that cannot be decoded
    # cannot be scored, and a length limit set for memory holds for every forward pass.
    usable = _usable(labelled, exclude, min_duration_s, max_duration_s)
    train = usable[usable["split"] == pool]
    # The official train split is already speaker-disjoint from dev/test; filtering it too
    # keeps the guarantee on hand-made or demo releases.
    train = train[~_pairs_in(train, held_out)]
    test = usable[usable["split"] == "test"]
    return _Pools(langs, train, test, shared, conflicting)


def _check_table(table: pd.DataFrame) -> None:
    lacking = [c for c in _TABLE_COLUMNS if c not in table.columns]
    if lacking:
        raise ValueError(
            f"the release table lacks column(s) {', '.join(lacking)}; build it with "
            "cltm.data.commonvoice.read_release"
        )


def _rows_of(table: pd.DataFrame, languages: tuple[str, ...]) -> pd.DataFrame:
    rows = table[table["language"].isin(languages)]
    if "duration_s" in rows.columns:
        rows = rows.loc[:, [*_TABLE_COLUMNS, "duration_s"]]
    else:
        rows = rows.loc[:, list(_TABLE_COLUMNS)].assign(duration_s=np.nan)
    rows = rows.astype({"duration_s": float})
    return rows.drop_duplicates(["language", "split", "clip"]).reset_index(drop=True)


def _drop_shared_speakers(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    # The paper keeps speaker identities language-disjoint: a contributor who recorded two of
    # the selected languages would carry their voice from D_j into language i's evaluation.
    pairs = rows[["language", "speaker"]].drop_duplicates()
    per_speaker = pairs["speaker"].value_counts()
    shared = set(per_speaker.index[per_speaker > 1])
    if not shared:
        return rows, {}
    counts = pairs.loc[pairs["speaker"].isin(shared), "language"].value_counts().to_dict()
    log.info(
        "speakers recorded in more than one selected language, left out of all of them: %s",
        _format_counts(counts),
    )
    return rows[~rows["speaker"].isin(shared)], counts


def _drop_conflicting_speakers(labelled: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    genders = labelled.groupby(["language", "speaker"])["gender"].nunique()
    bad = genders[genders > 1]
    if bad.empty:
        return labelled, {}
    counts = bad.index.get_level_values("language").value_counts().to_dict()
    log.info(
        "speakers whose clips are labelled both male and female, left out: %s",
        _format_counts(counts),
    )
    bad_pairs = bad.index.to_frame(index=False)
    return labelled[~_pairs_in(labelled, bad_pairs)], counts


def _pairs_in(rows: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    """Which rows have a (language, speaker) found in `pairs`."""
    if pairs.empty or rows.empty:
        return np.zeros(len(rows), dtype=bool)
    wanted = pd.MultiIndex.from_frame(pairs[["language", "speaker"]].astype(object))
    have = pd.MultiIndex.from_frame(rows[["language", "speaker"]].astype(object))
    return np.asarray(have.isin(wanted))


def _usable(
    rows: pd.DataFrame,
    exclude: Collection[str],
    min_duration_s: float | None,
    max_duration_s: float | None,
) -> pd.DataFrame:
    keep = ~rows["clip"].isin(list(exclude))
    duration = rows["duration_s"]
    # An unknown duration passes: releases before 17.0 have no durations file at all. Where a
    # filter is set, the subsets stage measures the clips chosen that way and chooses again
    # (cltm.data.build.choose_measured), which ends at the choice known durations would give.
    if min_duration_s is not None:
        keep &= duration.isna() | (duration >= min_duration_s)
    if max_duration_s is not None:
        keep &= duration.isna() | (duration <= max_duration_s)
    return rows[keep]


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{lang} {n}" for lang, n in sorted(counts.items()))


# --------------------------------------------------------------------------- sizes and shortage


def _speakers_per_subset(task: str, N: int, clips_per_speaker: int) -> int:
    if N < 1 or clips_per_speaker < 1:
        raise CltmError(
            f"tasks.{task}.N ({N}) and tasks.{task}.clips_per_speaker ({clips_per_speaker}) "
            "must both be positive integers."
        )
    if N % clips_per_speaker:
        raise CltmError(
            f"tasks.{task}.N ({N}) is not a multiple of tasks.{task}.clips_per_speaker "
            f"({clips_per_speaker}): every speaker contributes exactly clips_per_speaker clips, "
            "so choose N divisible by clips_per_speaker."
        )
    return N // clips_per_speaker


def _check_eval_cap(cap: int | None) -> None:
    if cap is not None and cap < 2:
        raise CltmError(
            f"tasks.gender.eval_max_per_language is {cap}; set it to at least 2 (one clip per "
            "gender), or to null to evaluate on the whole test split."
        )


def _collect_short(pools: _Pools, needs_of: Callable[[str], str]) -> list[ShortLanguage]:
    short = []
    for language in pools.languages:
        needs = needs_of(language)
        if needs:
            short.append(ShortLanguage(language, needs))
    return short


def _resolve_short(
    short: list[ShortLanguage], languages: tuple[str, ...], task: str, drop_short: bool
) -> list[str]:
    if not short:
        return list(languages)
    if not drop_short:
        raise ShortLanguagesError(short, task)
    names = {s.language for s in short}
    kept = [lang for lang in languages if lang not in names]
    if not kept:
        raise ShortLanguagesError(short, task, none_left=True)
    # Speakers shared with a dropped language stay excluded: the kept languages' subsets are
    # then the same as if the short ones had been selected too.
    log.warning(
        "%s task: leaving out %d short language(s): %s",
        task,
        len(short),
        "; ".join(f"{s.language} ({s.needs})" for s in short),
    )
    return kept


def _eligible_speakers(rows: pd.DataFrame, clips_per_speaker: int) -> int:
    sizes = rows.groupby("speaker").size()
    return int((sizes >= clips_per_speaker).sum())


def _gender_needs(pools: _Pools, language: str, per_lane: int, cps: int) -> str:
    train, test = pools.of(language)
    needs = []
    for gender in GENDERS:
        has = _eligible_speakers(_of_gender(train, gender), cps)
        if has < 2 * per_lane:
            needs.append(
                f"gender: {2 * per_lane} {gender} speakers with >= {cps} clips in the "
                f"training pool (has {has})"
            )
    for gender in GENDERS:
        if not (test["gender"] == gender).any():
            needs.append(f"gender eval: >= 1 {gender} clip in the test split (has 0)")
    return "; ".join(needs)


def _speaker_needs(pools: _Pools, language: str, per_lane: int, cps: int) -> str:
    train, test = pools.of(language)
    needs = []
    for gender in GENDERS:
        has = _eligible_speakers(_of_gender(train, gender), cps)
        if has < 2 * per_lane:
            needs.append(
                f"speaker: {2 * per_lane} {gender} speakers with >= {cps} clips in the "
                f"training pool (has {has})"
            )
    if not any(_can_make_trials(_of_gender(test, gender)) for gender in GENDERS):
        needs.append(
            "speaker eval: 2 test speakers of one gender, one of them with >= 2 clips (has none)"
        )
    return "; ".join(needs)


def _can_make_trials(rows: pd.DataFrame) -> bool:
    """Both a positive and a negative trial can be drawn from these clips of one gender."""
    sizes = rows.groupby("speaker").size()
    return len(sizes) >= 2 and int(sizes.max()) >= 2


def _counts(
    train: pd.DataFrame, test: pd.DataFrame, gender: str, gender_cps: int, speaker_cps: int
) -> dict[str, int]:
    return {
        f"pool_speakers_{gender}": int(train["speaker"].nunique()),
        f"pool_clips_{gender}": len(train),
        f"test_speakers_{gender}": int(test["speaker"].nunique()),
        f"test_clips_{gender}": len(test),
        f"gender_eligible_{gender}": _eligible_speakers(train, gender_cps),
        f"speaker_eligible_{gender}": _eligible_speakers(train, speaker_cps),
    }


# --------------------------------------------------------------------------- stable choice


def _hash_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _hash_keys(prefix: str, ids: pd.Series | pd.Index) -> np.ndarray:
    # tolist() first: iterating an Arrow-backed column item by item is several times slower.
    return np.fromiter(
        (_hash_key(f"{prefix}{i}") for i in ids.tolist()), dtype=np.uint64, count=len(ids)
    )


def _of_gender(rows: pd.DataFrame, gender: str) -> pd.DataFrame:
    return rows[rows["gender"] == gender]


def _draw(
    rows: pd.DataFrame, per_lane: int, clips_per_speaker: int, prefix: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """D and D' from one language's pool rows of one gender: per_lane speakers each.

    Every speaker is tied by hash to a lane (D or D'), and each lane takes its best-ranked
    speakers that still have enough clips. A speaker who loses a clip therefore only hands
    their slot to the next speaker of the same lane, and the other lane does not move.
    """
    first, eligible = _first_clips(rows, clips_per_speaker, prefix)
    order = pd.DataFrame(
        {
            "speaker": eligible,
            "key": _hash_keys(f"{prefix}speaker|", eligible),
            "lane": _hash_keys(f"{prefix}lane|", eligible) & np.uint64(1),
        }
    ).sort_values(["key", "speaker"], kind="stable")
    lane_d = list(order.loc[order["lane"] == 0, "speaker"])
    lane_d_prime = list(order.loc[order["lane"] == 1, "speaker"])
    d, d_prime = _fill_lanes(lane_d, lane_d_prime, per_lane)
    return first[first["speaker"].isin(d)], first[first["speaker"].isin(d_prime)]


def _deal(rows: pd.DataFrame, n_languages: int, per_lane: int, clips_per_speaker: int,
          prefix: str) -> list[pd.DataFrame]:
    """2 · n_languages disjoint blocks of per_lane speakers (D, D' of the first language, D, D'
    of the second, ...) from the pool rows of one gender: its eligible speakers, ranked by hash,
    dealt in turn. Every block is then a uniform draw from the pool less the blocks before it, so
    any two blocks are exchangeable.
    """
    first, eligible = _first_clips(rows, clips_per_speaker, prefix)
    order = pd.DataFrame({"speaker": eligible, "key": _hash_keys(f"{prefix}speaker|", eligible)})
    ranked = order.sort_values(["key", "speaker"], kind="stable")["speaker"].tolist()
    if len(ranked) < 2 * n_languages * per_lane:
        raise AssertionError("capacity was checked before dealing")  # pragma: no cover
    return [first[first["speaker"].isin(ranked[k * per_lane:(k + 1) * per_lane])]
            for k in range(2 * n_languages)]


def _first_clips(rows: pd.DataFrame, clips_per_speaker: int,
                 prefix: str) -> tuple[pd.DataFrame, pd.Index]:
    """Each speaker's first clips_per_speaker clips by hash, and the speakers with that many."""
    ranked = rows.assign(_key=_hash_keys(f"{prefix}clip|", rows["clip"]))
    ranked = ranked.sort_values(["speaker", "_key", "clip"], kind="stable")
    first = ranked[ranked.groupby("speaker", sort=False).cumcount() < clips_per_speaker]
    sizes = first.groupby("speaker").size()
    return first.drop(columns="_key"), sizes.index[sizes >= clips_per_speaker]


def _fill_lanes(lane_a: list[str], lane_b: list[str], k: int) -> tuple[list[str], list[str]]:
    # A lane with fewer than k speakers borrows the other lane's surplus (in rank order), so
    # the capacity needed is exactly 2k eligible speakers, whatever the hash split.
    a, b = lane_a[:k], lane_b[:k]
    a += lane_b[k:][: k - len(a)]
    b += lane_a[k:][: k - len(b)]
    if len(a) < k or len(b) < k:
        raise AssertionError("capacity was checked before drawing")  # pragma: no cover
    return a, b


def _gender_eval(test: pd.DataFrame, language: str, seed: int, cap: int | None) -> pd.DataFrame:
    if cap is None:
        return test
    parts = []
    for gender in GENDERS:
        rows = _of_gender(test, gender)
        keys = _hash_keys(f"{seed}|{language}|gender-eval|clip|", rows["clip"])
        ranked = rows.assign(_key=keys).sort_values(["_key", "clip"], kind="stable")
        parts.append(ranked.head(cap // 2).drop(columns="_key"))
    return pd.concat(parts)


def _prefixes(seed: int, language: str, task: str,
              draws: Sequence[int] | None) -> list[tuple[int | None, str]]:
    """(draw, hash prefix) of each selection of D and D': one without draws (the prefix of
    the fixed selection, unchanged), else one per training seed."""
    if draws is None:
        return [(None, f"{seed}|{language}|{task}|")]
    return [(int(d), f"{seed}/{int(d)}|{language}|{task}|") for d in draws]


def _with_role(rows: pd.DataFrame, role: str, draw: int | None = None) -> pd.DataFrame:
    rows = rows.assign(role=role)
    locale = ["locale"] if "locale" in rows.columns else []
    rows = rows.loc[:, [*MANIFEST_COLUMNS, *locale]]
    return rows if draw is None else rows.assign(draw=draw)


def _manifest(parts: list[pd.DataFrame], shared_pool: bool = False) -> pd.DataFrame:
    manifest = pd.concat(parts, ignore_index=True)
    if shared_pool:  # evaluation rows serve the language they lie in
        manifest["locale"] = manifest["locale"].fillna(manifest["language"])
    columns = list(MANIFEST_COLUMNS) + (["draw"] if "draw" in manifest.columns else [])
    columns += ["locale"] if shared_pool else []
    manifest = manifest.loc[:, columns]
    manifest = manifest.sort_values([c for c in ("language", "role", "draw", "speaker", "clip")
                                     if c in columns], kind="stable")
    manifest = manifest.reset_index(drop=True).astype({"duration_s": float})
    return manifest.astype({"draw": int}) if "draw" in columns else manifest


# --------------------------------------------------------------------------- trials


def _eval_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    lacking = [c for c in ("clip", "language", "speaker", "gender") if c not in manifest.columns]
    if lacking:
        raise ValueError(f"the manifest lacks column(s) {', '.join(lacking)}")
    rows = manifest
    if "role" in rows.columns:
        rows = rows[rows["role"] == "eval"]
    rows = rows[rows["gender"].isin(GENDERS)]
    return rows.drop_duplicates(["language", "clip"])


def _empty_trials() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": pd.Series(dtype=object),
            "b": pd.Series(dtype=object),
            "label": pd.Series(dtype=np.int64),
            "language": pd.Series(dtype=object),
            "gender": pd.Series(dtype=object),
        }
    )


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_hash_key("|".join(str(p) for p in parts)))


def _trials_of_group(
    group: pd.DataFrame, language: str, gender: str, seed: int, cap: int
) -> pd.DataFrame:
    # Sorting first makes the trials independent of the manifest's row order.
    group = group.sort_values(["speaker", "clip"], kind="stable")
    clips = group["clip"].astype(str).to_numpy()
    per_speaker = group.groupby("speaker", sort=False).size()  # in the sorted order above
    speakers, sizes = per_speaker.index.to_numpy(), per_speaker.to_numpy()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    positives: list[tuple[str, str]] = []
    for speaker, start, size in zip(speakers, starts, sizes, strict=True):
        rng = _rng(seed, language, gender, "positive", speaker)
        for i, j in _sample_within(rng, int(size), cap):
            positives.append((clips[start + i], clips[start + j]))

    rng = _rng(seed, language, gender, "negative")
    negatives = [
        (min(clips[i], clips[j]), max(clips[i], clips[j]))
        for i, j in _sample_across(rng, starts, sizes, len(positives))
    ]
    if len(negatives) < len(positives):
        log.warning(
            "%s, %s speakers: only %d negative trials exist (clips of two different speakers), "
            "fewer than the %d positive ones; using all of them",
            language,
            gender,
            len(negatives),
            len(positives),
        )
    pairs = positives + negatives
    return pd.DataFrame(
        {
            "a": [p[0] for p in pairs],
            "b": [p[1] for p in pairs],
            "label": np.array([1] * len(positives) + [0] * len(negatives), dtype=np.int64),
            "language": language,
            "gender": gender,
        },
        columns=list(TRIAL_COLUMNS),
    )


def _sample_within(rng: np.random.Generator, n: int, want: int) -> list[tuple[int, int]]:
    """Up to `want` distinct pairs i < j of range(n), uniformly."""
    total = n * (n - 1) // 2
    if total <= _DENSE_FACTOR * want:
        return _choose(rng, list(itertools.combinations(range(n), 2)), want)

    def draw(size: int) -> tuple[np.ndarray, np.ndarray]:
        i = rng.integers(n, size=size)
        j = rng.integers(n - 1, size=size)
        return i, j + (j >= i)

    return _collect(draw, want)


def _sample_across(
    rng: np.random.Generator, starts: np.ndarray, sizes: np.ndarray, want: int
) -> list[tuple[int, int]]:
    """Up to `want` distinct pairs of indices from two different blocks, uniformly."""
    n = int(sizes.sum())
    total = (n * n - int((sizes.astype(np.int64) ** 2).sum())) // 2
    if want == 0 or total == 0:
        return []
    if total <= _DENSE_FACTOR * want:
        every = [
            (i, j)
            for s, t in itertools.combinations(range(len(sizes)), 2)
            for i in range(starts[s], starts[s] + sizes[s])
            for j in range(starts[t], starts[t] + sizes[t])
        ]
        return _choose(rng, every, want)

    block = np.repeat(np.arange(len(sizes)), sizes)
    others = (n - sizes[block]).astype(float)

    def draw(size: int) -> tuple[np.ndarray, np.ndarray]:
        # First clip weighted by how many partners it has, second uniform among those
        # partners: every ordered cross-speaker pair is then equally likely.
        i = rng.choice(n, size=size, p=others / others.sum())
        u = rng.integers(0, n - sizes[block[i]])
        return i, u + sizes[block[i]] * (u >= starts[block[i]])

    return _collect(draw, want)


def _choose(
    rng: np.random.Generator, every: list[tuple[int, int]], want: int
) -> list[tuple[int, int]]:
    if len(every) <= want:
        return every
    picked = rng.choice(len(every), size=want, replace=False)
    return sorted(every[k] for k in picked)


def _collect(
    draw: Callable[[int], tuple[np.ndarray, np.ndarray]], want: int
) -> list[tuple[int, int]]:
    # Only called when candidates outnumber `want` several times, so repeats are rare.
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < want:
        i, j = draw(2 * (want - len(chosen)) + 8)
        for a, b in zip(np.minimum(i, j), np.maximum(i, j), strict=True):
            chosen.setdefault((int(a), int(b)))
            if len(chosen) == want:
                break
    return sorted(chosen)
