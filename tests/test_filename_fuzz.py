"""Property-based tests of the --filename template (hypothesis).

Any track name, any template: either a clear error (a one-line UsageError for the template, or
an error for that one track), or a path inside the output folder with the format's extension,
distinct for distinct stems and, in a batch, for distinct inputs. The same through the real
entry point on a few examples: `sfsep batch` with generated file names and templates either
refuses the template in one line (exit 2, nothing written) or writes only finished stems, all
inside --out, four per input it reports done.

Statistics (examples run, and how many templates were refused): `pytest tests/test_filename_fuzz.py
--hypothesis-show-statistics`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from conftest import tone_mix
from sfsep.audio import check_template, output_path, template_fields
from sfsep.errors import AudioError, UsageError
from sfsep.pipeline import OutputOptions, Settings, plan_outputs

OUT = Path("/nonexistent-sfsep-fuzz/separated/model")
NO_EXPLAIN = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]  # explain: minutes

# Pieces that templates and track names are made of: the fields, and everything that has been
# or could be misread as a field or as a path step.
PLAIN = ["{stem}", "{track}", "{trackext}", "{model}", "{ext}", "{resampler}", "{{", "}}", "/", ".", "-", "_", " "]
ODD = ["{", "}", "{0}", "{}", "{stem:.1}", "{stem!r}", "{track[0]}", "{stem.upper}", "{nope}", "//", "..",
       "./", "../", ".wav", ".flac", ".WAV", "\\", "%s", "\n", "~", "\0"]
FRAGMENTS = PLAIN + ODD
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}/\0"), max_size=8)
RESAMPLERS = st.sampled_from(["conventional", "noisy", "noise", "trainable", "none"])

STEM_SETS = st.one_of(
    st.sampled_from([("vocals", "drums", "bass", "other"), ("drums", "bass", "other", "vocals", "guitar", "piano"),
                     ("vocals", "other"), ("vocals", "instrumental")]),
    st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True), min_size=1, max_size=6, unique=True).map(tuple),
)


@st.composite
def templates(draw) -> str:
    """Half of them from plain pieces (mostly accepted), the others from anything."""
    if draw(st.booleans()):
        pieces = draw(st.lists(st.one_of(st.sampled_from(PLAIN), SAFE_TEXT), max_size=5))
    else:
        pieces = draw(st.lists(st.one_of(st.sampled_from(FRAGMENTS), TEXT), max_size=5))
    for field in ("{stem}", "{track}"):  # mostly present, anywhere
        if draw(st.integers(0, 5)):
            pieces.insert(draw(st.integers(0, len(pieces))), field)
    if draw(st.integers(0, 5)):
        pieces.append(".{ext}")
    return "".join(pieces)


def track_names(path_steps: bool) -> st.SearchStrategy[str]:
    """Any name (`path_steps`: also with "/" and ".."; batch tracks are paths below the folder)."""
    fragments = FRAGMENTS if path_steps else [f for f in FRAGMENTS if "/" not in f and f != "\0"]
    text = TEXT if path_steps else st.text(st.characters(blacklist_categories=("Cs",),
                                                         blacklist_characters="/\0"), max_size=8)
    return st.lists(st.one_of(st.sampled_from(fragments), text), min_size=1, max_size=5).map("".join)


def _inside(path: Path, out: Path, ext: str) -> str:
    """The path's normalized form, after checking that it is a file below `out` with extension `ext`."""
    normal = os.path.normpath(path)
    assert os.path.commonpath([normal, str(out)]) == str(out) and normal != str(out), (path, out)
    assert ".." not in Path(os.path.relpath(normal, out)).parts, path
    assert Path(normal).suffix.lower() == f".{ext}", path
    return normal


def _usage_error_is_clear(error: UsageError, template: str) -> None:
    assert str(error).startswith(f"--filename {template!r}: "), error
    assert "{stem}" in str(error) or "{track}" in str(error) or "{ext}" in str(error) or "inside" in str(error) \
        or "NUL" in str(error), error


@settings(max_examples=1000, deadline=None, phases=NO_EXPLAIN)
@example(template="{track}.{ext}", track="song", stems=("vocals", "drums"), ext="wav",
         trackext="wav", resampler="noisy")
@example(template="{trackext}.{ext}", track="song", stems=("vocals", "drums"), ext="wav",
         trackext="wav", resampler="noisy")
@example(template="{stem}", track="song", stems=("vocals", "drums"), ext="wav", trackext="wav", resampler="noisy")
@example(template="{track}/{stem}.{ext}", track="{stem}", stems=("vocals", "drums"), ext="wav",
         trackext="wav", resampler="noisy")
@example(template="{track}/{stem}.{ext}", track="x{0}y", stems=("vocals", "drums"), ext="flac",
         trackext="wav", resampler="noisy")
@example(template="{track}/{stem}.{ext}", track="..", stems=("vocals", "drums"), ext="wav",
         trackext="wav", resampler="noisy")
@example(template="{track}/{resampler}/{stem}.{ext}", track="..", stems=("vocals", "drums"), ext="wav",
         trackext="wav", resampler="none")
@given(template=templates(), track=track_names(path_steps=False), stems=STEM_SETS,
       ext=st.sampled_from(["wav", "flac"]), trackext=st.sampled_from(["wav", "flac", "mp3", ""]),
       resampler=RESAMPLERS)
def test_any_template_any_track_gives_an_error_or_distinct_paths_inside(template, track, stems, ext, trackext,
                                                                         resampler):
    try:
        check_template(template, ext=ext)
    except UsageError as error:
        event("template refused")
        _usage_error_is_clear(error, template)
        return
    event("template accepted")
    paths = []
    for stem in stems:
        try:
            paths.append(output_path(template, out=OUT, model="model", track=track, trackext=trackext, stem=stem,
                                     ext=ext, resampler=resampler))
        except AudioError as error:  # this track's name cannot be used with this template
            event("track refused")
            assert str(error).startswith(f"track {track!r}: "), error
            return
    normals = [_inside(path, OUT, ext) for path in paths]
    assert len(set(normals)) == len(stems), (template, track, normals)


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    """Inputs for the batch plans: input0.wav, input2.wav, input4.wav at 8 kHz (auto picks noisy for
    a 44.1 kHz model), input1.wav at 44.1 kHz (none), input3.wav not audio (refused when the
    template names {resampler}, which needs the file's rate)."""
    folder = tmp_path_factory.mktemp("music")
    for index in range(5):
        if index == 3:
            (folder / "input3.wav").write_bytes(b"not audio")
        else:
            sf.write(folder / f"input{index}.wav", tone_mix(8000, 0.01), 44100 if index == 1 else 8000)
    return folder


@settings(max_examples=800, deadline=None, phases=NO_EXPLAIN)
@example(template="{stem}.{ext}", tracks=["a", "b"], stems=("vocals", "drums"), ext="wav")
@example(template="{track}/{resampler}-{stem}.{ext}", tracks=["a", "b", "c", "d"], stems=("vocals",), ext="wav")
@example(template="{resampler}/{stem}.{ext}", tracks=["a", "b"], stems=("vocals",), ext="wav")
@example(template="{track}/{stem}.{ext}", tracks=["song", "song"], stems=("vocals",), ext="wav")
@example(template="{track}{stem}.{ext}", tracks=["a", "av"], stems=("vocals", "ocals"), ext="wav")
@example(template="{track}/{stem}.{ext}", tracks=["sub/.", "sub"], stems=("vocals",), ext="wav")
@given(template=templates(), tracks=st.lists(track_names(path_steps=True), min_size=2, max_size=5, unique=True),
       stems=STEM_SETS, ext=st.sampled_from(["wav", "flac"]))
def test_a_batch_of_any_tracks_gives_errors_or_distinct_paths_inside(music, template, tracks, stems, ext):
    try:
        check_template(template, ext=ext, several_tracks=True)
    except UsageError as error:
        event("template refused")
        _usage_error_is_clear(error, template)
        return
    event("template accepted")
    separator = SimpleNamespace(spec=SimpleNamespace(name="model", model_rate=lambda rate: 44100),
                                stem_names=list(stems))
    inputs = [(music / f"input{index}.wav", track) for index, track in enumerate(tracks)]
    plan = plan_outputs(inputs, separator, OutputOptions(out=OUT, filename=template, format=ext), Settings())
    names_resampler = "resampler" in template_fields(template)
    if names_resampler:
        event("template names {resampler}")
    assert set(plan.targets) | set(plan.refused) == {path for path, _ in inputs}
    assert not set(plan.targets) & set(plan.refused)
    seen: dict[str, Path] = {}
    for path, track in inputs:
        if path in plan.refused:
            message = str(plan.refused[path])
            assert message.startswith(f"{path}: ") and "Traceback" not in message, message
            event("input refused")
            continue
        assert not (names_resampler and path.name == "input3.wav"), "a file whose rate is unknown was planned"
        targets = plan.targets[path]
        assert list(targets) == list(stems)
        for target in targets.values():
            if names_resampler:
                assert ("none" if path.name == "input1.wav" else "noisy") in str(target), (template, target)
            normal = _inside(target, OUT, ext)
            assert normal not in seen, (template, track, seen.get(normal), path)
            seen[normal] = path
    first = inputs[0][0]
    assert first in plan.targets or "collision" not in str(plan.refused[first])


# --------------------------------------------------------------------------------------------
# Through the real entry point


def _file_names() -> st.SearchStrategy[str]:
    """Names a file can have (no "/", no NUL, short), with an audio extension."""
    name = track_names(path_steps=False).filter(lambda n: len(n.encode()) <= 60)
    return st.tuples(name, st.sampled_from([".wav", ".flac"])).map("".join).filter(
        lambda n: Path(n).suffix in (".wav", ".flac"))  # "..wav" is the track ".", "...wav" the track ".."


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=30, deadline=None, phases=NO_EXPLAIN,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(template="{track}/{stem}.{ext}", names=["song.wav", "song.flac", "{stem}.wav"])
@example(template="{track}/{stem}.{ext}", names=["x{0}y.wav", "...wav", "..wav"])
@given(template=templates(), names=st.lists(_file_names(), min_size=2, max_size=3, unique=True))
def test_batch_through_the_cli_refuses_or_writes_only_inside_out(run_cli, template, names):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        music, out = root / "music", root / "out"
        music.mkdir()
        for index, name in enumerate(names):
            sf.write(music / name, tone_mix(8000, 0.1, seed=index), 8000, format=Path(name).suffix[1:].upper())
        result = run_cli("batch", music, "--model", "classic", "--out", out, "--filename", template)
        assert "Traceback" not in result.err, result
        written = sorted(p for p in root.rglob("*") if p.is_file() and p.parent != music)
        if result.code == 2:
            event("template refused")
            lines = [line for line in result.err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: --filename "), result
            assert written == []
            return
        event("template accepted")
        assert result.code in (0, 1), result
        counts = re.search(r"(\d+) done, (\d+) skipped, (\d+) failed", result.out)
        assert counts, result
        done, skipped, failed = map(int, counts.groups())
        assert done + skipped + failed == len(list(music.iterdir())), result
        assert (result.code == 1) == (failed > 0), result
        assert len(written) == 4 * done, (written, result)
        for path in written:
            _inside(path, out / "classic", "wav")
