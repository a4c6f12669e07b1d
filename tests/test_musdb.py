"""MUSDB18-HQ reader on a tiny synthetic dataset built in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from sfsep.errors import DatasetError, SfsepError, UsageError
from sfsep.evaluate.musdb import (
    SOURCES,
    STEMS,
    VALIDATION_TRACKS,
    MusdbTrack,
    list_tracks,
    resolve_root,
)

LENGTH = 441  # 10 ms per file keeps the dataset tiny
TEST_TRACKS = ["AM Contra - Heart Peripheral", "Al James - Schoolboy Facination", "Zeno - Signs"]
TRAIN_TRACKS = ["A Classic Education - NightOwl", "Actions - One Minute Smile", "Leaf - Summerghost"]


def _signal(seed: int, channels: int = 2, length: int = LENGTH) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (length, channels)).astype(np.float32)


def _write_track(folder, seed=0, rate=44100, lengths=None, channels=2, skip=()):
    folder.mkdir(parents=True)
    for index, stem in enumerate(STEMS):
        if stem in skip:
            continue
        length = (lengths or {}).get(stem, LENGTH)
        soundfile.write(
            str(folder / f"{stem}.wav"), _signal(seed * 10 + index, channels, length), rate,
            subtype="FLOAT",
        )


@pytest.fixture
def musdb_root(tmp_path):
    root = tmp_path / "musdb18hq"
    for seed, name in enumerate(TEST_TRACKS):
        _write_track(root / "test" / name, seed=seed)
    for seed, name in enumerate(TRAIN_TRACKS):
        _write_track(root / "train" / name, seed=100 + seed)
    return root


def test_subsets_and_validation_split(musdb_root):
    test = list_tracks(musdb_root, "test")
    assert [t.name for t in test] == sorted(TEST_TRACKS)
    assert all(t.subset == "test" and t.folder.parent.name == "test" for t in test)
    valid = list_tracks(musdb_root, "valid")
    assert [t.name for t in valid] == ["Actions - One Minute Smile", "Leaf - Summerghost"]
    train = list_tracks(musdb_root, "train")
    assert [t.name for t in train] == ["A Classic Education - NightOwl"]
    assert len(VALIDATION_TRACKS) == 14 and len(set(VALIDATION_TRACKS)) == 14
    track = test[0]
    assert (track.num_samples, track.channels, track.rate) == (LENGTH, 2, 44100)
    assert track.duration == pytest.approx(0.01)
    assert track.source_names == SOURCES == ("vocals", "drums", "bass", "other")


def test_selection_by_count_and_name(musdb_root):
    assert [t.name for t in list_tracks(musdb_root, "test", tracks=2)] == sorted(TEST_TRACKS)[:2]
    assert len(list_tracks(musdb_root, "test", tracks=99)) == 3
    only = list_tracks(musdb_root, "test", track="Zeno - Signs")
    assert [t.name for t in only] == ["Zeno - Signs"]
    two = list_tracks(musdb_root, "test", track=["Zeno - Signs", "AM Contra - Heart Peripheral"])
    assert [t.name for t in two] == ["AM Contra - Heart Peripheral", "Zeno - Signs"]
    with pytest.raises(UsageError, match="--tracks"):
        list_tracks(musdb_root, "test", tracks=0)
    with pytest.raises(UsageError, match="subset"):
        list_tracks(musdb_root, "dev")


def test_unknown_track_name_suggests(musdb_root):
    with pytest.raises(DatasetError, match="Zeno - Signs") as info:
        list_tracks(musdb_root, "test", track="Zeno - Sign")
    assert "no track 'Zeno - Sign'" in str(info.value) and str(musdb_root / "test") in str(info.value)
    with pytest.raises(DatasetError, match="--subset valid"):
        list_tracks(musdb_root, "train", track="Leaf - Summerghost")


def test_load_is_float32_channels_first(musdb_root):
    track = list_tracks(musdb_root, "test", track="Zeno - Signs")[0]
    vocals = track.load("vocals")
    assert vocals.dtype == torch.float32 and vocals.shape == (2, LENGTH)
    seed = TEST_TRACKS.index("Zeno - Signs")
    expected = _signal(seed * 10 + STEMS.index("vocals"))
    np.testing.assert_array_equal(vocals.numpy(), expected.T)
    assert track.mixture().shape == (2, LENGTH)
    assert list(track.sources()) == list(SOURCES)
    with pytest.raises(DatasetError, match="unknown MUSDB stem"):
        track.path("guitar")


def test_root_from_environment(musdb_root, monkeypatch):
    monkeypatch.setenv("MUSDB_PATH", str(musdb_root))
    assert resolve_root(None) == musdb_root
    assert len(list_tracks(subset="test")) == 3
    monkeypatch.delenv("MUSDB_PATH")
    with pytest.raises(DatasetError, match="MUSDB_PATH"):
        list_tracks(subset="test")


def test_not_a_musdb_folder(tmp_path, musdb_root):
    with pytest.raises(DatasetError, match="does not exist"):
        list_tracks(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="is not a MUSDB18-HQ folder") as info:
        list_tracks(empty, "test")
    assert str(empty) in str(info.value)
    with pytest.raises(DatasetError, match=f"Pass {musdb_root}"):
        list_tracks(musdb_root / "test", "test")
    compressed = tmp_path / "musdb18"
    (compressed / "train").mkdir(parents=True)
    (compressed / "train" / "x.stem.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match="compressed MUSDB18"):
        list_tracks(compressed, "test")  # no test/ folder at all
    (compressed / "test").mkdir()
    (compressed / "test" / "y.stem.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match="has no track folders.*compressed MUSDB18"):
        list_tracks(compressed, "test")  # test/ holds stem files, not track folders


def test_missing_stem_file(musdb_root):
    _write_track(musdb_root / "test" / "Broken - Track", skip=("bass",))
    with pytest.raises(DatasetError, match="missing bass.wav") as info:
        list_tracks(musdb_root, "test")
    assert str(musdb_root / "test" / "Broken - Track" / "bass.wav") in str(info.value)
    # only selected tracks are checked
    assert len(list_tracks(musdb_root, "test", track="Zeno - Signs")) == 1


def test_wrong_rate(musdb_root):
    _write_track(musdb_root / "test" / "Low - Rate", rate=22050)
    with pytest.raises(DatasetError, match="22050 Hz") as info:
        list_tracks(musdb_root, "test", track="Low - Rate")
    assert "mixture.wav" in str(info.value) and "44100" in str(info.value)


def test_mismatched_lengths_and_channels(musdb_root):
    _write_track(musdb_root / "test" / "Short - Drums", lengths={"drums": LENGTH - 1})
    with pytest.raises(DatasetError, match="drums.wav has 440 samples but mixture.wav has 441"):
        list_tracks(musdb_root, "test", track="Short - Drums")
    folder = musdb_root / "test" / "Mono - Other"
    _write_track(folder)
    soundfile.write(str(folder / "other.wav"), _signal(7, channels=1), 44100)
    with pytest.raises(DatasetError, match="other.wav has 1 channels"):
        list_tracks(musdb_root, "test", track="Mono - Other")


def test_unreadable_file_and_errors_are_sfsep_errors(musdb_root):
    folder = musdb_root / "test" / "Garbage - File"
    _write_track(folder)
    (folder / "vocals.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(DatasetError, match="cannot read") as info:
        list_tracks(musdb_root, "test", track="Garbage - File")
    assert isinstance(info.value, SfsepError)
    track = MusdbTrack("Garbage - File", "test", folder, LENGTH, 2)
    with pytest.raises(DatasetError, match="vocals.wav"):
        track.load("vocals")
