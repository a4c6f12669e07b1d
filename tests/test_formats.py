"""Output formats (wav, flac, mp3, ogg, opus) read back, their settings, and input that only FFmpeg
reads (the optional `sfsep[ffmpeg]` extra, PyAV).

Length tolerance when a lossy stem is read back: none. A codec pads the signal (LAME adds 576
samples of encoder delay and fills the last 1152-sample frame; Opus starts with a pre-skip of
312 samples at 48 kHz and ends in whole 20-ms frames; Vorbis in whole blocks), but every one of
these files says how much to drop: the LAME/Info tag records the mp3's delay and padding, and an
Ogg stream's granule positions (with Opus' pre-skip) give its exact first and last sample.
libsndfile writes and honours both, so a stem reads back with exactly the length written; a
decoder that ignored them would return up to about 2 frames more, which is what these checks would
catch.
"""

from __future__ import annotations

import math
import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import files_below, one_line_error, tone_mix
from sfsep import audio
from sfsep.errors import UsageError

STEMS = ("bass", "drums", "other", "vocals")
MAJOR = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
         "ogg": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS")}


def _read_back(path: Path) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and the rate; no NaN or Inf anywhere."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert np.isfinite(data).all(), path
    return data, rate


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    return 10 * math.log10(float((reference ** 2).sum()) / float(((reference - estimate) ** 2).sum()))


def _stem_sum(folder: Path, fmt: str) -> tuple[np.ndarray, int]:
    parts = [_read_back(folder / f"{stem}.{fmt}") for stem in STEMS]
    assert len({rate for _, rate in parts}) == 1
    return sum(data for data, _ in parts), parts[0][1]


# --------------------------------------------------------------------------------------------
# Output formats through the CLI


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "opus"])
def test_each_format_reads_back_with_rate_channels_length_and_content(run_cli, wav_file, tmp_path, fmt, channels):
    song = wav_file("song.wav", rate=16000, seconds=1.0, channels=channels)  # a rate all five formats hold
    out = tmp_path / "out"
    result = run_cli(song, "--model", "classic", "--format", fmt, "--out", out)
    assert result.code == 0, result
    folder = out / "classic" / "song"
    assert sorted(p.name for p in folder.iterdir()) == [f"{stem}.{fmt}" for stem in STEMS]  # {ext}
    for stem in STEMS:
        info = sf.info(folder / f"{stem}.{fmt}")
        assert (info.format, info.subtype) == MAJOR[fmt]
        data, rate = _read_back(folder / f"{stem}.{fmt}")
        assert rate == 16000 and data.shape == (16000, channels)
    # The classic separator's masks sum to one, so the stems add up to the mixture: what a codec
    # keeps of it says the stems were encoded, not written as silence or noise.
    total, _ = _stem_sum(folder, fmt)
    mixture, _ = _read_back(song)
    assert _snr_db(mixture, total) > (60 if fmt in ("wav", "flac") else 12), fmt


def test_template_ext_and_batch_write_the_format(run_cli, wav_file, tmp_path):
    wav_file("music/a.wav", rate=8000, seconds=0.5)
    wav_file("music/sub/b.wav", rate=8000, seconds=0.5, channels=1)
    out = tmp_path / "out"
    result = run_cli("batch", tmp_path / "music", "-R", "--model", "classic", "--format", "ogg", "--quality", "3",
                     "--out", out, "--filename", "{track}-{stem}.{ext}")
    assert result.code == 0, result
    written = sorted(str(p.relative_to(out / "classic")) for p in files_below(out))
    assert written == sorted([f"a-{stem}.ogg" for stem in STEMS] + [f"sub/b-{stem}.ogg" for stem in STEMS])
    data, rate = _read_back(out / "classic" / "sub" / "b-vocals.ogg")
    assert rate == 8000 and data.shape == (4000, 1)


@pytest.mark.parametrize("fmt,rate,written", [("opus", 44100, 48000), ("opus", 22050, 24000),
                                               ("mp3", 96000, 48000), ("mp3", 7000, 8000)])
def test_a_rate_the_format_cannot_hold_is_resampled_with_a_note(run_cli, wav_file, tmp_path, fmt, rate, written):
    seconds = 0.5
    song = wav_file("song.wav", rate=rate, seconds=seconds)
    out = tmp_path / "out"
    result = run_cli(song, "--model", "classic", "--format", fmt, "--out", out)
    assert result.code == 0, result
    assert f"{fmt} cannot hold {rate} Hz: the stems were written at {written} Hz" in result.out
    total, back_rate = _stem_sum(out / "classic" / "song", fmt)
    assert back_rate == written
    assert total.shape == (math.ceil(int(rate * seconds) * Fraction(written, rate)), 2)
    # Resampled, not relabelled: the mixture's 220 Hz tone is still at 220 Hz (samples written
    # as they are at the new rate would put it at 220 * written / rate Hz).
    spectrum = np.abs(np.fft.rfft(total.mean(1)))
    peak_hz = np.argmax(spectrum) * written / total.shape[0]
    assert abs(peak_hz - 220) <= written / total.shape[0], peak_hz


def _kbps(path: Path, seconds: float) -> float:
    return path.stat().st_size * 8 / seconds / 1000


def test_mp3_bitrate(run_cli, wav_file, tmp_path):
    # A constant-bitrate file holds bitrate * duration bits at least, plus a few frames (the
    # Info tag, the encoder delay, the last frame's padding): under 20% more for 1 s at 44.1 kHz
    # and 2 s at 8 kHz, which tells each bitrate from the next standard one.
    song = wav_file("song.wav", rate=44100, seconds=1.0)
    for kbps, args in [(64, ["--bitrate", "64"]), (192, ["--bitrate", "192"]), (320, [])]:
        out = tmp_path / f"out{kbps}"
        result = run_cli(song, "--model", "classic", "--format", "mp3", "--out", out, *args)
        assert result.code == 0, result
        assert kbps <= _kbps(out / "classic" / "song" / "vocals.mp3", 1.0) < 1.2 * kbps, (kbps, args)
    low = wav_file("low.wav", rate=8000, seconds=2.0)
    result = run_cli(low, "--model", "classic", "--format", "mp3", "--bitrate", "320", "--out", tmp_path / "low")
    assert result.code == 0, result
    assert "mp3 at 8000 Hz (MPEG-2.5) has no 320 kbps: written at 64 kbps" in result.out
    assert 64 <= _kbps(tmp_path / "low" / "classic" / "low" / "vocals.mp3", 2.0) < 1.2 * 64


@pytest.mark.parametrize("fmt", ["ogg", "opus"])
def test_quality_sets_the_size(run_cli, wav_file, tmp_path, fmt):
    rng = np.random.default_rng(0)
    data = (0.2 * rng.standard_normal((48000, 2))).astype(np.float32)  # noise: every bit is used
    song = wav_file("noise.wav", rate=48000, data=data)
    sizes = {}
    for quality in (1, 8):
        out = tmp_path / f"q{quality}"
        result = run_cli(song, "--model", "classic", "--format", fmt, "--quality", str(quality), "--out", out)
        assert result.code == 0, result
        sizes[quality] = _kbps(out / "classic" / "noise" / f"other.{fmt}", 1.0)
    assert sizes[8] > 2 * sizes[1], sizes
    if fmt == "opus":  # the documented mapping: 6 + 25 Q kbps per channel, a target libopus keeps on noise
        for quality, kbps in sizes.items():
            assert 0.75 * 2 * (6 + 25 * quality) < kbps < 1.25 * 2 * (6 + 25 * quality), sizes


@pytest.mark.parametrize("args,fragment", [
    (("--format", "mp3", "--bits", "24"), "--bits 24 with --format mp3: a lossy format has no bit depth"),
    (("--format", "opus", "--bits", "16"), "--bits 16 with --format opus"),
    (("--format", "ogg", "--bitrate", "128"), "--bitrate 128 with --format ogg: only mp3 takes a bitrate"),
    (("--format", "wav", "--quality", "5"), "--quality 5 with --format wav: only ogg and opus take a quality"),
    (("--format", "mp3", "--quality", "5"), "(mp3 takes --bitrate)"),
    (("--format", "opus", "--quality", "11"), "--quality 11: use a number from 0 to 10"),
    (("--format", "mp3", "--bitrate", "100"), "--bitrate 100: use one of 8, 16,"),
    (("--format", "aac"), "--format aac: sfsep writes wav, flac, mp3, ogg, opus"),
    (("--format", "mp3", "--filename", "{track}/{stem}.wav"), "not .mp3"),
])
@pytest.mark.parametrize("command", ["separate", "batch"])
def test_settings_that_do_not_fit_the_format_are_usage_errors(run_cli, wav_file, tmp_path, args, fragment, command):
    song = wav_file("music/song.wav")
    out = tmp_path / "out"
    result = run_cli(command, song if command == "separate" else song.parent, "--model", "classic",
                     "--out", out, *args)
    one_line_error(result, fragment)
    assert result.code == 2
    assert files_below(out) == []


# --------------------------------------------------------------------------------------------
# The staged stems' second pass (--clip rescale) in the lossy formats


@pytest.mark.parametrize("fmt,rate", [("mp3", 44100), ("ogg", 44100), ("opus", 48000)])
def test_clip_rescale_second_pass_encodes_the_format(tmp_path, fmt, rate):
    time = torch.arange(rate) / rate
    tone = torch.stack([torch.sin(2 * math.pi * 440 * time), torch.cos(2 * math.pi * 440 * time)])
    targets = {"loud": tmp_path / f"loud.{fmt}", "quiet": tmp_path / f"quiet.{fmt}"}
    with audio.StagedStems(targets, rate, 2, clip="rescale") as staged:
        for first in range(0, rate, 10000):
            staged.write("loud", 4.0 * tone[:, first : first + 10000])
            staged.write("quiet", 0.5 * tone[:, first : first + 10000])
        reports = {report.path.stem: report for report in staged.publish()}
    assert reports["loud"].scale == pytest.approx(0.25) and reports["quiet"].scale == 1.0
    assert reports["loud"].clipped_samples > 0
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in targets.values())  # no staging files
    for name, level in (("loud", 1.0), ("quiet", 0.5)):
        assert (sf.info(targets[name]).format, sf.info(targets[name]).subtype) == MAJOR[fmt]
        data, back_rate = _read_back(targets[name])
        assert back_rate == rate and data.shape == (rate, 2)
        middle = data[rate // 4 : 3 * rate // 4]  # away from the codec's onset
        assert abs(np.abs(middle).max() - level) < 0.1 * level, (name, np.abs(middle).max())


def test_encoder_settings_for_a_rate(tmp_path):
    assert audio.writable_rate("opus", 44100) == 48000 and audio.writable_rate("opus", 16000) == 16000
    assert audio.writable_rate("mp3", 88200) == 48000 and audio.writable_rate("ogg", 384000) == 192000
    assert audio.writable_rate("flac", 7000) == 7000
    assert audio.mp3_bitrate(22050) == 160 and audio.mp3_bitrate(44100, 144) == 128  # the lower on a tie
    with pytest.raises(UsageError, match="--format opus holds 8000, 12000, 16000, 24000, 48000 Hz, not 44100"):
        audio.StagedStems({"vocals": tmp_path / "vocals.opus"}, 44100, 2)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Input through FFmpeg (PyAV)


def _write_aac(path: Path, rate: int, seconds: float, channels: int = 2, video: bool = False) -> Path:
    """Encode the test mixture as AAC with PyAV itself (in an mp4 with a small video stream when
    `video`)."""
    import av

    data = np.ascontiguousarray(tone_mix(rate, seconds, channels).T)
    layout = "stereo" if channels == 2 else "mono"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        pictures = None
        if video:
            pictures = container.add_stream("mpeg4", rate=10)
            pictures.width, pictures.height, pictures.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout=layout)
        for first in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, first : first + 1024]), format="fltp",
                                               layout=layout)
            frame.sample_rate = rate
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
        if pictures is not None:
            for index in range(int(seconds * 10)):
                image = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 20, np.uint8), format="rgb24")
                container.mux(pictures.encode(image))
            container.mux(pictures.encode(None))
    return path


def _decode_with_pyav(path: Path) -> np.ndarray:
    """The file's first audio stream decoded by PyAV on its own: (channels, samples) float32."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        planes = [frame.to_ndarray() for frame in container.decode(stream)]
    assert all(plane.dtype == np.float32 for plane in planes)  # AAC decodes to planar float
    return np.concatenate(planes, axis=1)


def test_ffmpeg_blocks_are_bounded_and_equal_pyav_decoding(tmp_path):
    pytest.importorskip("av")
    song = _write_aac(tmp_path / "song.m4a", 8000, 2.0)
    info = audio.check_input(song)
    assert (info.reader, info.rate, info.channels) == ("ffmpeg", 8000, 2)
    blocks = list(audio.read_blocks(song, block_frames=1000, info=info))
    assert all(block.shape == (2, 1000) for block in blocks[:-1]) and 0 < blocks[-1].shape[-1] <= 1000
    decoded = _decode_with_pyav(song)
    np.testing.assert_array_equal(torch.cat(blocks, -1).numpy(), decoded)
    # The container's duration is only an estimate: here it leaves out the AAC priming.
    assert info.frames != decoded.shape[1] and abs(info.frames - decoded.shape[1]) <= 2048


@pytest.mark.parametrize("name,channels,video", [("song.m4a", 2, False), ("voice.m4a", 1, False),
                                                  ("clip.mp4", 2, True)])
def test_m4a_and_video_input_is_separated_through_the_cli(run_cli, tmp_path, name, channels, video):
    pytest.importorskip("av")
    song = _write_aac(tmp_path / name, 22050, 1.0, channels=channels, video=video)
    decoded = _decode_with_pyav(song)
    out = tmp_path / "out"
    result = run_cli(song, "--model", "classic", "--format", "flac", "--bits", "24", "--out", out)
    assert result.code == 0, result
    total, rate = _stem_sum(out / "classic" / Path(name).stem, "flac")
    assert rate == 22050 and total.shape == (decoded.shape[1], channels)  # the decoded length
    assert _snr_db(decoded.T, total) > 60  # the stems of the decoded mixture, at 24 bits
    shown = run_cli("info", song)
    assert shown.code == 0 and "22050" in shown.out, shown


def _m4a_for_the_missing_extra(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _write_aac(path, 8000, 0.5)
    except ImportError:  # no PyAV here at all: the start of an m4a is as good for libsndfile
        path.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isomiso2" + bytes(2000))
        return path


def test_without_pyav_the_error_names_the_file_and_the_extra(run_cli, wav_file, tmp_path, monkeypatch):
    song = _m4a_for_the_missing_extra(tmp_path / "music" / "song.m4a")
    wav_file("music/other.wav", rate=8000, seconds=0.5)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    out = tmp_path / "out"
    result = run_cli(song, "--model", "classic", "--out", out)
    one_line_error(result, "song.m4a", "pip install 'sfsep[ffmpeg]'")  # printed, not taken for markup
    assert result.code == 1 and files_below(out) == []
    result = run_cli("batch", tmp_path / "music", "--model", "classic", "--out", out)
    assert result.code == 1, result
    assert "song.m4a" in result.err and "pip install 'sfsep[ffmpeg]'" in result.err, result.err
    assert [p.name for p in files_below(out)] == sorted(f"{stem}.wav" for stem in STEMS)  # other.wav went on
    text = tmp_path / "notes.wav"  # a libsndfile extension: not audio, whatever FFmpeg could do
    text.write_text("plain text\n" * 50)
    one_line_error(run_cli(text, "--out", out), "notes.wav: not an audio file that can be read")


def test_a_damaged_file_of_a_libsndfile_format_is_not_handed_to_ffmpeg(run_cli, tmp_path):
    """An MP3 cut so short that libsndfile refuses it was decoded by the FFmpeg fallback, which
    has no header length to hold it to: the cut file was separated with exit 0 (found by the
    audio fuzz tests). A format libsndfile owns and refuses is an error naming the file; FFmpeg
    serves only the formats libsndfile does not read."""
    pytest.importorskip("av")
    whole = tmp_path / "whole.mp3"
    sf.write(whole, tone_mix(22050, seconds=0.3), 22050, format="MP3")
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: int(len(data) * 0.15)])  # a few frames: libsndfile refuses it
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(cut))
    out = tmp_path / "out"
    result = run_cli(str(cut), "--model", "classic", "--out", str(out))
    one_line_error(result, str(cut), "not an audio file that can be read")
    assert not out.exists() or not files_below(out)
    assert run_cli("info", str(cut)).code == 1
