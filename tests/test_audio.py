"""Audio I/O: reading what libsndfile reads, refusing what is broken, writing atomically."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from sfsep import audio
from sfsep.errors import AudioError, UsageError
from sfsep.resample import resample


@pytest.mark.parametrize("fmt,subtype", [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "FLOAT"), ("flac", "PCM_16"),
                                         ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")])
def test_reads_common_formats_as_float32_channels_first(tmp_path, fmt, subtype):
    path = tmp_path / f"x.{fmt}"
    data = (0.3 * np.sin(np.linspace(0, 200, 16000))).astype(np.float32)
    sf.write(path, np.stack([data, -data], 1), 16000, subtype=subtype, format=fmt.upper() if fmt != "ogg" else "OGG")
    signal, rate = audio.read(path)
    assert rate == 16000 and signal.dtype == torch.float32 and signal.shape[0] == 2
    assert abs(signal.shape[1] - 16000) <= 1200  # lossy codecs pad a little


def test_missing_folder_empty_text_truncated_nan(tmp_path, wav_file):
    with pytest.raises(AudioError, match="no such file"):
        audio.read(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="is a folder"):
        audio.read(tmp_path)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        audio.read(empty)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match="notes.wav: not an audio file"):
        audio.read(text)
    whole = wav_file("whole.wav", rate=44100, seconds=1.0)
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(AudioError, match="cut.wav: the file is truncated"):
        audio.read(truncated)
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(whole.read_bytes()[:44])
    with pytest.raises(AudioError, match="header.wav"):
        audio.read(header_only)
    bad = np.zeros((1000, 2), np.float32)
    bad[10, 0] = np.nan
    bad[20, 1] = np.inf
    nan_path = wav_file("nan.wav", data=bad, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: contains 2 NaN or infinite samples"):
        audio.read(nan_path)


def test_more_than_two_channels_needs_downmix(wav_file):
    path = wav_file("six.wav", channels=6)
    with pytest.raises(AudioError, match="six.wav: has 6 channels.*--downmix"):
        audio.read(path)
    signal, _ = audio.read(path, downmix=True)
    assert signal.shape[0] == 2


@pytest.mark.parametrize("bits,subtype", [(16, "PCM_16"), (24, "PCM_24"), (32, "FLOAT")])
def test_write_bit_depths_and_clamp(tmp_path, bits, subtype):
    signal = torch.tensor([[0.5, 1.5, -2.0, 0.25]])
    report = audio.write(tmp_path / "o.wav", signal, 8000, bits=bits)
    assert sf.info(tmp_path / "o.wav").subtype == subtype
    assert report.clipped_samples == 2
    back, _ = sf.read(tmp_path / "o.wav", dtype="float32")
    assert np.abs(back).max() <= 1.0
    assert abs(back[0] - 0.5) < 1e-4


def test_rescale_keeps_shape_and_fits(tmp_path):
    signal = torch.tensor([[0.5, 2.0, -1.0]])
    report = audio.write(tmp_path / "o.flac", signal, 8000, bits=24, clip="rescale")
    back, _ = sf.read(tmp_path / "o.flac", dtype="float32")
    assert report.scale == pytest.approx(0.5)
    np.testing.assert_allclose(back, [0.25, 1.0 - 2**-23, -0.5], atol=2e-7)


def test_impossible_format_bits(tmp_path):
    with pytest.raises(UsageError, match="--bits 32 with --format flac"):
        audio.write(tmp_path / "o.flac", torch.zeros(1, 10), 8000, bits=32)
    with pytest.raises(UsageError, match="--format aac: sfsep writes wav, flac, mp3, ogg, opus"):
        audio.subtype_for("aac", 16)


def test_write_all_leaves_nothing_when_one_fails(tmp_path, monkeypatch):
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    first.write_bytes(b"old")
    real_write = sf.write
    calls = {"n": 0}

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(audio.sf, "write", failing_write)
    with pytest.raises(AudioError, match="b.wav: could not be written"):
        audio.write_all([(first, torch.zeros(1, 100)), (second, torch.zeros(1, 100))], 8000)
    assert first.read_bytes() == b"old"  # not replaced
    assert not second.exists()
    assert sorted(os.listdir(tmp_path)) == ["a.wav"]  # no temporary left


def test_existing_output_not_overwritten(tmp_path):
    target = tmp_path / "a.wav"
    target.write_bytes(b"old")
    with pytest.raises(AudioError, match="exists"):
        audio.write(target, torch.zeros(1, 10), 8000, overwrite=False)
    assert target.read_bytes() == b"old"


def test_effective_bandwidth_of_upsampled_file():
    rate_low, rate_high = 8000, 44100
    rng = torch.Generator().manual_seed(0)
    noise = torch.randn(2, rate_low * 3, generator=rng) * 0.1
    upsampled = resample(noise, rate_low, rate_high)
    bandwidth = audio.effective_bandwidth(upsampled, rate_high)
    # White noise is the hardest case: flat up to 4 kHz, so the kernel's transition band
    # (about 3.6 to 4.6 kHz for Kaiser-24 at rolloff 0.99) stays above -60 dB up to ~4.5 kHz.
    assert 3500 < bandwidth < 4700, bandwidth
    from_16k = resample(torch.randn(2, 16000 * 2, generator=rng) * 0.1, 16000, rate_high)
    assert 7500 < audio.effective_bandwidth(from_16k, rate_high) < 9300  # same transition, scaled
    full = torch.randn(2, rate_high * 3, generator=rng) * 0.1
    assert audio.effective_bandwidth(full, rate_high) > 20000
    assert audio.effective_bandwidth(torch.zeros(2, 1000), rate_high) == 0.0


def test_output_path_template(tmp_path):
    path = audio.output_path("{track}/{stem}.{ext}", out=tmp_path, model="m", track="song", trackext="wav",
                             stem="vocals", ext="flac")
    assert path == tmp_path / "song" / "vocals.flac"
    with pytest.raises(UsageError, match="unknown field"):
        audio.output_path("{nope}", out=tmp_path, model="m", track="s", trackext="w", stem="v", ext="wav")
    with pytest.raises(UsageError, match="inside the output folder"):
        audio.output_path("../{stem}.{ext}", out=tmp_path, model="m", track="s", trackext="w", stem="v", ext="wav")
