"""MUSDB18-HQ reader: the folder layout, the subsets and the standard validation split.

Layout (the decoded "HQ" release; the compressed `.stem.mp4` release is not read):

    <root>/train/<track name>/{mixture,vocals,drums,bass,other}.wav
    <root>/test/<track name>/{mixture,vocals,drums,bass,other}.wav

Subsets: "test" is `<root>/test`; "valid" is the 14 tracks of `<root>/train` that sigsep's
`musdb` package lists as its validation split (`musdb/configs/mus.yaml`,
`validation_tracks`); "train" is `<root>/train` without them. Tracks come in sorted name
order, as in `musdb`.

Nothing is decoded when tracks are listed: `list_tracks` checks each selected track's files
from their headers (present, 44100 Hz, same length and channels as the mixture) and
`MusdbTrack.load` reads one stem on demand as float32 (channels, samples) and refuses NaN or
infinite samples. Every problem a user can cause raises `DatasetError` naming the folder or
file. The root defaults to the `MUSDB_PATH` environment variable, as in `musdb`.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile
import torch

from sfsep.errors import DatasetError, UsageError

__all__ = [
    "MUSDB_RATE",
    "SOURCES",
    "STEMS",
    "SUBSETS",
    "VALIDATION_TRACKS",
    "MusdbTrack",
    "list_tracks",
    "resolve_root",
]

#: Sampling rate of every MUSDB18-HQ file.
MUSDB_RATE = 44100
#: Source names in musdb's order.
SOURCES = ("vocals", "drums", "bass", "other")
#: Files of a track folder (without the `.wav`).
STEMS = ("mixture",) + SOURCES
SUBSETS = ("test", "train", "valid")

#: musdb's validation split of the training set (sigsep-mus-db, musdb/configs/mus.yaml).
VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)


@dataclass(frozen=True)
class MusdbTrack:
    """One MUSDB18-HQ track folder, checked from the file headers; audio read on demand."""

    name: str
    subset: str  # "test", "train" or "valid" (the subset it was listed under)
    folder: Path
    num_samples: int
    channels: int
    rate: int = MUSDB_RATE

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_samples / self.rate

    @property
    def source_names(self) -> tuple[str, ...]:
        return SOURCES

    def path(self, stem: str) -> Path:
        """File of `stem` ("mixture" or a source name)."""
        if stem not in STEMS:
            raise DatasetError(f"unknown MUSDB stem {stem!r}; expected one of {', '.join(STEMS)}")
        return self.folder / f"{stem}.wav"

    def load(self, stem: str) -> torch.Tensor:
        """Read one stem as float32 (channels, samples); NaN or infinite samples are a
        DatasetError naming the file (a score against them would mean nothing)."""
        path = self.path(stem)
        try:
            data, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as error:
            raise DatasetError(f"cannot read {path}: {error}") from error
        finite = np.isfinite(data)
        if not finite.all():
            first = int(np.flatnonzero(~finite.all(axis=1))[0])
            what = "the mixture" if stem == "mixture" else f"the {stem} reference"
            raise DatasetError(
                f"{path}: {what} contains {int((~finite).sum())} NaN or infinite samples (the first at "
                f"{first / MUSDB_RATE:.2f} s), so nothing can be scored against it; restore the file from "
                f"the MUSDB18-HQ release")
        return torch.from_numpy(np.ascontiguousarray(data.T))

    def mixture(self) -> torch.Tensor:
        return self.load("mixture")

    def sources(self, names: Sequence[str] = SOURCES) -> dict[str, torch.Tensor]:
        """Source name -> float32 (channels, samples)."""
        return {name: self.load(name) for name in names}


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The MUSDB18-HQ root: `root`, else $MUSDB_PATH; checked to exist."""
    if root is None or str(root) == "":
        from_env = os.environ.get("MUSDB_PATH", "")
        if not from_env:
            raise DatasetError(
                "no MUSDB18-HQ folder given: pass --musdb PATH or set the MUSDB_PATH "
                "environment variable"
            )
        root = from_env
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"MUSDB18-HQ folder {path} does not exist (or is not a folder)")
    return path


def list_tracks(
    root: str | os.PathLike | None = None,
    subset: str = "test",
    tracks: int | None = None,
    track: str | Sequence[str] | None = None,
    *,
    no_valid_hint: str = "use --subset train or test",
) -> list[MusdbTrack]:
    """Tracks of `subset` ("test", "train" or "valid"), sorted by name.

    `track` keeps only the named track(s) (exact folder names; an unknown name is an error
    that suggests close matches); `tracks` then keeps the first N. Each selected track's
    files are checked from their headers (only those: a partial copy of the dataset works).
    """
    if subset not in SUBSETS:
        raise UsageError(f"unknown MUSDB subset {subset!r}; use one of {', '.join(SUBSETS)}")
    if tracks is not None and int(tracks) < 1:
        raise UsageError(f"--tracks must be at least 1 (got {tracks})")
    root = resolve_root(root)
    folder_name = "test" if subset == "test" else "train"
    names = _track_folders(root, folder_name)
    if subset == "train":
        names = [name for name in names if name not in VALIDATION_TRACKS]
    elif subset == "valid":
        names = [name for name in names if name in VALIDATION_TRACKS]
        if not names:
            raise DatasetError(
                f"{root / 'train'} holds none of musdb's 14 validation tracks (e.g. "
                f"{VALIDATION_TRACKS[0]!r}); {no_valid_hint}"
            )

    if track is not None:
        wanted = [track] if isinstance(track, str) else list(track)
        for name in wanted:
            if name not in names:
                raise DatasetError(_unknown_track_message(name, names, root / folder_name, subset))
        names = [name for name in names if name in wanted]
    if tracks is not None:
        names = names[: int(tracks)]

    folder = root / folder_name
    return [_checked_track(folder / name, subset) for name in names]


def _track_folders(root: Path, folder_name: str) -> list[str]:
    folder = root / folder_name
    if not folder.is_dir():
        hint = ""
        if (root / "mixture.wav").exists():
            hint = f" {root} looks like a single track folder; pass the dataset root above it."
        elif (root.parent / folder_name).is_dir() and root.name in ("train", "test"):
            hint = f" Pass {root.parent} instead."
        elif _has_compressed_stems(root):
            hint = _COMPRESSED_HINT
        raise DatasetError(
            f"{root} is not a MUSDB18-HQ folder: it has no '{folder_name}' sub-folder "
            f"(expected {root / folder_name / '<track>' / 'mixture.wav'}).{hint}"
        )
    names = sorted(
        entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if not names:
        hint = _COMPRESSED_HINT if _has_compressed_stems(root) else ""
        raise DatasetError(
            f"{folder} has no track folders (expected {folder / '<track>' / 'mixture.wav'}); "
            f"is {root} a MUSDB18-HQ folder?{hint}"
        )
    return names


_COMPRESSED_HINT = (
    " It holds .stem.mp4 files: that is the compressed MUSDB18 release; sfsep reads the "
    "MUSDB18-HQ wav release (or the stems decoded to wav in the same layout)."
)


def _has_compressed_stems(root: Path) -> bool:
    return any(root.glob("*.stem.mp4")) or any(root.glob("*/*.stem.mp4"))


def _unknown_track_message(name: str, names: list[str], folder: Path, subset: str) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    message = f"no track {name!r} in the {subset} subset ({folder})."
    if subset != "valid" and name in VALIDATION_TRACKS:
        message += " It is a validation track: use --subset valid."
    elif subset == "valid" and (folder / name).is_dir():
        message += " It is not one of musdb's validation tracks: use --subset train."
    if close:
        message += " Did you mean: " + "; ".join(repr(c) for c in close) + "?"
    return message


def _checked_track(folder: Path, subset: str) -> MusdbTrack:
    """Check a track folder from the file headers."""
    infos = {}
    for stem in STEMS:
        path = folder / f"{stem}.wav"
        if not path.is_file():
            raise DatasetError(
                f"MUSDB track {folder.name!r} is missing {path.name} ({path}); every track "
                f"folder needs {', '.join(s + '.wav' for s in STEMS)}"
            )
        try:
            infos[stem] = soundfile.info(str(path))
        except (RuntimeError, OSError) as error:
            raise DatasetError(f"cannot read {path}: {error}") from error
    for stem, info in infos.items():
        if info.samplerate != MUSDB_RATE:
            raise DatasetError(
                f"{folder / (stem + '.wav')} is at {info.samplerate} Hz; MUSDB18-HQ files are "
                f"{MUSDB_RATE} Hz (use the original files, not resampled copies)"
            )
    mixture = infos["mixture"]
    for stem in SOURCES:
        info = infos[stem]
        if info.frames != mixture.frames:
            raise DatasetError(
                f"{folder / (stem + '.wav')} has {info.frames} samples but mixture.wav has "
                f"{mixture.frames}; the stems of a MUSDB track must have the mixture's length"
            )
        if info.channels != mixture.channels:
            raise DatasetError(
                f"{folder / (stem + '.wav')} has {info.channels} channels but mixture.wav has "
                f"{mixture.channels}"
            )
    return MusdbTrack(
        name=folder.name,
        subset=subset,
        folder=folder,
        num_samples=int(mixture.frames),
        channels=int(mixture.channels),
    )
