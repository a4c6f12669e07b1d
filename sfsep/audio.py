"""Audio files in and out: reading, inspection (rate, channels, effective bandwidth), writing.

Reading goes through soundfile (libsndfile: WAV, FLAC, OGG, MP3 where the bundled library has it,
AIFF, ...) to float32 tensors shaped (channels, samples). A file libsndfile cannot read (m4a/AAC,
the sound of a video, ...) is decoded with PyAV (FFmpeg) when the optional `sfsep[ffmpeg]` extra
is installed; PyAV is imported only then. Everything that can be wrong with an input file becomes
an `AudioError` naming the file: missing, a folder, not audio, truncated, empty, NaN/Inf samples,
too many channels, a format that needs the ffmpeg extra.

Stems are written as wav or flac (16/24-bit PCM, or 32-bit float wav), or lossy as mp3 (constant
bitrate, `bitrate` kbps), ogg (Vorbis) or opus (Ogg Opus) with a `quality` from 0 to 10; all through
libsndfile, which encodes MP3 with LAME. `encoder_options` says how a format is written at a rate,
`writable_rate` which rate a format can hold (mp3 and opus take only a few).

Writing is atomic: the file is written under a temporary name in the target folder and renamed
into place when complete, so an interrupted run never leaves a half-written stem under the final
name, and an existing file is never partly overwritten. `atomic_path` is that one helper for every
file sfsep writes (stems here; evaluation records and reports too); its temporary files get the
permissions the umask gives, like any other new file. A set of stems is published all or nothing
(`StagedStems`), and `TrackLock` keeps two runs from writing one track's stems at once.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import re
import secrets
import shutil
import string
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import torch

from .errors import AudioError, UsageError, os_error_reason

try:
    import fcntl
except ImportError:  # Windows: TrackLock does nothing there
    fcntl = None

SNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".w64", ".caf",
                      ".opus")
"""Extensions of the formats libsndfile reads."""
FFMPEG_EXTENSIONS = (".m4a", ".aac", ".mp4", ".m4b", ".alac", ".wma", ".mka", ".ac3", ".ape", ".wv", ".amr")
"""Audio formats only FFmpeg reads (the `sfsep[ffmpeg]` extra); videos are read too when named."""
AUDIO_EXTENSIONS = SNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS
"""Extensions that `sfsep batch` picks up in a folder (not videos: name those to `sfsep separate`)."""
FFMPEG_HINT = "pip install 'sfsep[ffmpeg]'"

WRITE_FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG", "opus": "OGG"}
"""--format -> libsndfile's major format."""
SUBTYPES = {
    ("wav", 16): "PCM_16",
    ("wav", 24): "PCM_24",
    ("wav", 32): "FLOAT",
    ("flac", 16): "PCM_16",
    ("flac", 24): "PCM_24",
    ("mp3", None): "MPEG_LAYER_III",  # lossy formats have no bit depth
    ("ogg", None): "VORBIS",
    ("opus", None): "OPUS",
}
LOSSY_FORMATS = ("mp3", "ogg", "opus")
FORMAT_RATES = {
    "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),  # MPEG-1, -2 and -2.5
    "opus": (8000, 12000, 16000, 24000, 48000),  # libopus' rates
}
"""The only rates these formats hold (libsndfile refuses the others)."""
VORBIS_MAX_RATE = 200_000
"""libvorbis has no encoder setup above 200 kHz (libsndfile 1.2.2 crashes there instead of failing)."""
MP3_BITRATES = {
    "MPEG-1": (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # 32 to 48 kHz
    "MPEG-2": (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # 16 to 24 kHz
    "MPEG-2.5": (8, 16, 24, 32, 40, 48, 56, 64),  # 8 to 12 kHz: libsndfile reaches 64 kbps at most
}
"""Layer III bitrates (kbps) by MPEG version, as far as libsndfile's encoder reaches them."""
CLIP_MODES = ("clamp", "rescale", "none")


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    rate: int
    channels: int
    frames: int  # with reader "ffmpeg" an estimate from the container's duration: decode to know it
    format: str
    subtype: str
    reader: str = "soundfile"  # "soundfile" (libsndfile) or "ffmpeg" (PyAV)

    @property
    def duration(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


def _check_path(path: Path) -> None:
    try:
        if not path.exists():
            raise AudioError(f"{path}: no such file")
        if path.is_dir():
            raise AudioError(f"{path}: is a folder, not an audio file (use `sfsep batch` for folders)")
        if path.stat().st_size == 0:
            raise AudioError(f"{path}: the file is empty (0 bytes)")
    except OSError as exc:  # e.g. a name longer than the file system takes
        raise AudioError(f"{path}: cannot be read ({os_error_reason(exc, path)})") from exc


def _check_riff_complete(path: Path) -> None:
    """libsndfile reads a truncated WAV without complaint (it returns the frames that are there),
    so compare the declared size of the data chunk with the bytes actually present."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
            return
        little = header[:4] == b"RIFF"
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk_id = handle.read(4)
            (chunk_size,) = struct.unpack("<I" if little else ">I", handle.read(4))
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):  # streamed or unknown length: nothing to check
                    return
                available = size - (position + 8)
                if available < chunk_size:
                    percent = 100.0 * available / chunk_size
                    raise AudioError(
                        f"{path}: the file is truncated ({available} of {chunk_size} data bytes, "
                        f"{percent:.0f}%); re-export or re-download it"
                    )
                return
            position += 8 + chunk_size + (chunk_size & 1)


MAX_INPUT_RATE = 1_000_000
"""The highest sampling rate accepted (ultrasonic recorders reach 500 kHz to 1 MHz). A damaged
header can claim 2^31 Hz, and the analyses sized by the rate would then ask for gigabytes."""


def inspect(path: str | os.PathLike) -> AudioInfo:
    """Rate, channels, length and format of an audio file, without decoding it."""
    path = Path(path)
    _check_path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        if path.suffix.lower() in SNDFILE_EXTENSIONS:
            # A format libsndfile owns and refuses is damaged (or misnamed): FFmpeg would decode
            # what it can of it with no header length to hold it to, and a cut MP3 would pass.
            raise AudioError(f"{path}: not an audio file that can be read ({_short(exc)}); if it is "
                             f"really another format, give it that format's extension") from exc
        return _ffmpeg_inspect(path, exc)
    _check_riff_complete(path)
    if info.frames == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if not 0 < info.samplerate <= MAX_INPUT_RATE:
        raise AudioError(f"{path}: its header gives a sampling rate of {info.samplerate} Hz, more than any audio "
                         f"sfsep reads (at most {MAX_INPUT_RATE} Hz); the header is probably damaged")
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)


SFE_SYSTEM = 2
"""libsndfile's code for "System error.": a call into the system failed; errno says which."""


def _write_problem(exc: Exception, folder: Path) -> str:
    """Why a write failed, in plain words. libsndfile reports a full disk, a read-only folder or
    a file size limit only as "System error."; the C library's errno (which soundfile's cffi
    keeps) says which, and without it a folder with no free space left says it too."""
    if isinstance(exc, OSError):
        return os_error_reason(exc)
    if getattr(exc, "code", None) == SFE_SYSTEM:
        ffi = getattr(sf, "_ffi", None)
        code = getattr(ffi, "errno", 0) if ffi is not None else 0
        if code:
            return os_error_reason(OSError(code, os.strerror(code)))
        try:
            if shutil.disk_usage(folder).free < BLOCK_FRAMES * 8:
                return os_error_reason(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        except OSError:
            pass
    return _short(exc)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


def check_input(path: str | os.PathLike, *, downmix: bool = False, max_channels: int = 2) -> AudioInfo:
    """The checks that need no decoding (exists, is audio, complete, not empty, channel count),
    so that a batch of bad inputs is reported before any model is loaded."""
    info = inspect(path)
    if info.channels > max_channels and not downmix:
        raise AudioError(
            f"{info.path}: has {info.channels} channels; sfsep separates mono or stereo "
            f"(add --downmix to fold it to stereo)"
        )
    return info


MP3_FRAME = 1152
"""Samples in one MPEG-1 Layer III frame, the unit an MP3's length is known to."""


def _mp3_states_its_length(path: Path) -> bool:
    """True when an MP3 states its length (a Xing/Info or VBRI header in its first frame, after
    any ID3v2 tag); without one, libmpg123 estimates the length from the file's size."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(10)
            start = 0
            if len(head) == 10 and head[:3] == b"ID3":
                start = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F))
            handle.seek(start)
            data = handle.read(4096)
    except OSError:
        return False
    sync = next((index for index in range(len(data) - 1) if data[index] == 0xFF and data[index + 1] & 0xE0 == 0xE0),
                None)
    return sync is not None and any(tag in data[sync:sync + 200] for tag in (b"Xing", b"Info", b"VBRI"))


def check_length(info: AudioInfo, decoded: int) -> str | None:
    """Compare the number of frames a file decoded to with the number its header declares.

    libsndfile (libmpg123 for MP3) returns what it can decode of a truncated compressed file
    without an error: a cut MP3 gave 63407 of its declared 132300 frames. More than 1% (and more
    than one MP3 frame) missing is an AudioError naming the file. A smaller shortfall in a file
    that states its length exactly returns a note to show the user; an MP3 without a length
    header only has an estimate, so a small difference there is not reported.
    """
    missing = info.frames - decoded
    if missing <= 0:
        return None
    where = (f"it decodes to {decoded} samples ({decoded / info.rate:.2f} s) but its header declares "
             f"{info.frames} ({info.frames / info.rate:.2f} s)")
    if missing > max(MP3_FRAME, info.frames // 100):
        raise AudioError(f"{info.path}: the file is truncated or damaged: {where}, "
                         f"{100 * decoded / info.frames:.0f}%; re-export or re-download it")
    if info.format != "MP3" or _mp3_states_its_length(info.path):
        return f"{info.path}: {where}; its last {missing / info.rate * 1000:.0f} ms may be missing"
    return None


def read(path: str | os.PathLike, *, downmix: bool = False, max_channels: int = 2) -> tuple[torch.Tensor, int]:
    """Decode a file to float32 (channels, samples) and its rate.

    More than `max_channels` channels is an error unless `downmix`, which averages them to stereo
    (odd channels to the left, even to the right, as a plain fold-down).
    """
    info = check_input(path, downmix=downmix, max_channels=max_channels)
    # One decoding path for whole and streamed reads: libmpg123 decoded a damaged MP3 to 768
    # frames in one call and to 960 block by block (found by the audio fuzz tests), and the two
    # must never disagree. read_blocks checks NaN/Inf, emptiness and the header's length.
    blocks = list(read_blocks(info.path, max_channels=max_channels, info=info))
    return (blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)), info.rate


def fold_to_stereo(audio: torch.Tensor) -> torch.Tensor:
    """Average channels 0, 2, 4... into left and 1, 3, 5... into right."""
    return torch.stack([audio[0::2].mean(0), audio[1::2].mean(0)])


BLOCK_FRAMES = 1 << 18
"""Frames per block when a file is streamed (262144: 6 s at 44.1 kHz, 2 MB of stereo float32)."""


def read_blocks(path: str | os.PathLike, *, downmix: bool = False, max_channels: int = 2,
                block_frames: int = BLOCK_FRAMES, info: AudioInfo | None = None):
    """Decode a file block by block: yields float32 (channels, n) tensors, folded to stereo as
    `read` does. A block with NaN or Inf samples raises AudioError naming the file (a consumer
    that stages output must then discard it, as the streaming pipeline does). Iterate it again
    for a second pass: each call opens the file afresh."""
    info = info or check_input(path, downmix=downmix, max_channels=max_channels)
    path = info.path
    seen = 0
    blocks = _ffmpeg_blocks(info, block_frames) if info.reader == "ffmpeg" else _sndfile_blocks(info, block_frames)
    for data in blocks:  # (frames, channels) float32
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise AudioError(f"{path}: contains NaN or infinite samples ({bad} in the block at "
                             f"{seen / info.rate:.1f} s); the file is damaged")
        seen += data.shape[0]
        audio = torch.from_numpy(np.ascontiguousarray(data.T))
        yield fold_to_stereo(audio) if audio.shape[0] > max_channels else audio
    if seen == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if info.reader != "ffmpeg":  # FFmpeg's frame count is only an estimate from the duration
        check_length(info, seen)  # a truncated file is refused at the end of every pass


def _sndfile_blocks(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    try:
        with sf.SoundFile(str(info.path)) as handle:
            while True:
                data = handle.read(block_frames, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    return
                yield data
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{info.path}: could not be decoded ({_short(exc)})") from exc


# --------------------------------------------------------------------------------------------
# Formats only FFmpeg reads (the optional PyAV dependency)


def _import_av(path: Path):
    """PyAV, or an AudioError naming `path` and the extra to install."""
    try:
        import av
    except ImportError:
        raise AudioError(f"{path}: not a format libsndfile reads; reading it needs FFmpeg: {FFMPEG_HINT}") from None
    return av


def _ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's message without PyAV's "[Errno N] ... : 'path'" wrapping."""
    return getattr(exc, "strerror", None) or _short(exc)


def _ffmpeg_inspect(path: Path, sndfile_error: Exception) -> AudioInfo:
    """Rate, channels and estimated length, through PyAV, of a file libsndfile could not open
    and whose extension is not one of libsndfile's (`inspect` refuses those). Without PyAV: an
    error that names the ffmpeg extra."""
    try:
        import av
    except ImportError:
        raise AudioError(f"{path}: not a format libsndfile reads ({_short(sndfile_error)}); reading it needs "
                         f"FFmpeg: {FFMPEG_HINT}") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: has no audio stream")
            stream = container.streams.audio[0]
            context = stream.codec_context
            if context is None:  # FFmpeg found a stream but no decoder for it
                raise AudioError(f"{path}: not an audio file that can be read ({_short(sndfile_error)}; FFmpeg "
                                 f"has no decoder for its audio stream)")
            rate = int(context.sample_rate or stream.rate or 0)
            channels = len(context.layout.channels) if context.layout else int(getattr(context, "channels", 0))
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / av.time_base
            container_name, codec = container.format.name, context.name
    except (av.error.FFmpegError, AttributeError, TypeError, ValueError, OverflowError) as exc:
        # FFmpegError: FFmpeg refused the file; the others: PyAV met a stream whose fields a
        # damaged header left unset or absurd.
        raise AudioError(f"{path}: not an audio file that can be read ({_short(sndfile_error)}; FFmpeg: "
                         f"{_ffmpeg_reason(exc)})") from exc
    if rate <= 0 or channels <= 0:
        raise AudioError(f"{path}: its audio stream states no sampling rate or channel count")
    return AudioInfo(path, rate, channels, max(0, round(seconds * rate)), f"FFMPEG:{container_name}", codec.upper(),
                     reader="ffmpeg")


def _ffmpeg_blocks(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    """Decode the first audio stream with PyAV into (frames, channels) float32 blocks of
    `block_frames` (the last one shorter). FFmpeg's converter only changes the sample format to
    float: the rate and channel layout are the stream's (a stream that changes them midway is
    brought back to the rate and layout it started with)."""
    av = _import_av(info.path)
    held: list[np.ndarray] = []
    count = 0
    try:
        with av.open(str(info.path)) as container:
            stream = container.streams.audio[0]
            converter = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=info.rate)
            frames = itertools.chain.from_iterable(converter.resample(frame) for frame in container.decode(stream))
            for frame in itertools.chain(frames, converter.resample(None)):
                data = frame.to_ndarray().T  # planar (channels, n) -> (n, channels)
                held.append(data)
                count += data.shape[0]
                while count >= block_frames:
                    joined = np.concatenate(held)
                    yield joined[:block_frames]
                    held, count = [joined[block_frames:]], count - block_frames
    except (av.error.FFmpegError, AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise AudioError(f"{info.path}: could not be decoded (FFmpeg: {_ffmpeg_reason(exc)})") from exc
    if count:
        yield np.concatenate(held)


# --------------------------------------------------------------------------------------------
# Effective bandwidth


BANDWIDTH_FRAMES = 400
"""Most analysis frames `effective_bandwidth` looks at, spread evenly over the signal."""


def _bandwidth_layout(samples: int, rate: int) -> tuple[int, list[int]]:
    """FFT size and the start of every analysis frame for a signal of `samples` samples."""
    n_fft = 1 << max(6, round(math.log2(rate * 0.093)))
    count = max(1, (max(samples, n_fft) - n_fft) // (n_fft // 2) + 1)
    if count > BANDWIDTH_FRAMES:
        picked = torch.linspace(0, count - 1, BANDWIDTH_FRAMES).long().tolist()
    else:
        picked = list(range(count))
    return n_fft, [index * (n_fft // 2) for index in picked]


def effective_bandwidth(audio: torch.Tensor, rate: int, *, threshold_db: float = 60.0) -> float:
    """The highest frequency (Hz) at which the long-term spectrum is within `threshold_db` of its peak.

    The long-term spectrum is the mean power spectrum of Hann-windowed frames of about 93 ms of
    the channel average (at most ~400 frames spread over the file), smoothed over ~1% of the band
    so that a single stray bin does not count. A 44.1 kHz file upsampled from 8 kHz reports about
    4 kHz (4.0 to 4.5 kHz: the upsampler's own transition band lies above the old Nyquist and is
    counted while it is within the threshold); a silent file reports 0.
    """
    mono = audio.double().mean(0) if audio.dim() == 2 else audio.double()
    n_fft, starts = _bandwidth_layout(mono.numel(), rate)
    if mono.numel() < n_fft:
        mono = torch.nn.functional.pad(mono, (0, n_fft - mono.numel()))
    frames = torch.stack([mono[start : start + n_fft] for start in starts])
    return _bandwidth_of_frames(frames, rate, threshold_db)


def file_bandwidth(info: AudioInfo, *, threshold_db: float = 60.0) -> float:
    """`effective_bandwidth` of a whole file, reading only its analysis frames (by seeking), so
    that a long file costs a few hundred short reads, not a decode of the whole file. A file read
    through FFmpeg (whose seeking is not sample-exact) is decoded once instead and the frames are
    picked out as the blocks pass; give it `info` with the decoded length as `frames`."""
    n_fft, starts = _bandwidth_layout(info.frames, info.rate)
    if info.reader == "ffmpeg":
        return _bandwidth_of_frames(_stream_frames(info, n_fft, starts), info.rate, threshold_db)
    frames = []
    try:
        with sf.SoundFile(str(info.path)) as handle:
            for start in starts:
                handle.seek(start)
                data = handle.read(n_fft, dtype="float64", always_2d=True)
                mono = torch.from_numpy(np.ascontiguousarray(data.mean(1)))
                frames.append(torch.nn.functional.pad(mono, (0, n_fft - mono.numel())))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{info.path}: could not be decoded ({_short(exc)})") from exc
    frames = torch.nan_to_num(torch.stack(frames), nan=0.0, posinf=0.0, neginf=0.0)
    return _bandwidth_of_frames(frames, info.rate, threshold_db)


def _stream_frames(info: AudioInfo, n_fft: int, starts: list[int]) -> torch.Tensor:
    """The channel-mean frames [start, start + n_fft) of a file, gathered in one decoding pass."""
    frames = torch.zeros(len(starts), n_fft, dtype=torch.float64)
    position = 0
    for block in read_blocks(info.path, max_channels=max(2, info.channels), info=info):
        mono = block.double().mean(0)
        end = position + mono.numel()
        for index, start in enumerate(starts):
            first, last = max(start, position), min(start + n_fft, end)
            if first < last:
                frames[index, first - start : last - start] = mono[first - position : last - position]
        position = end
    return frames


def _bandwidth_of_frames(frames: torch.Tensor, rate: int, threshold_db: float) -> float:
    n_fft = frames.shape[-1]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    power = torch.fft.rfft(frames * window).abs().pow(2).mean(0)
    width = max(1, power.numel() // 100)
    smooth = torch.nn.functional.avg_pool1d(power[None, None], width, stride=1, padding=width // 2,
                                            count_include_pad=False)[0, 0][: power.numel()]
    peak = smooth.max()
    if peak <= 0:
        return 0.0
    level_db = 10 * torch.log10(smooth / peak + 1e-300)
    above = torch.nonzero(level_db >= -threshold_db).flatten()
    highest_bin = int(above.max())
    return min(rate / 2, highest_bin * rate / n_fft)


# --------------------------------------------------------------------------------------------
# Writing


def new_temporary(path: str | os.PathLike, *, prefix: str | None = None, suffix: str = ".part") -> str:
    """Create an empty file under a fresh hidden name in `path`'s folder and return that name
    (`<prefix><random><suffix>`, the prefix `.<name of path>.` by default).

    Unlike `tempfile.mkstemp`, which always creates mode 0600, the file is created with mode 0666
    less the umask (the kernel applies it, and a default ACL), as any other new file is: what is
    renamed into place later has the permissions the user's other files get.
    """
    path = Path(path)
    prefix = f".{path.name}." if prefix is None else prefix
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(path.parent, f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(name, flags, 0o666))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


@contextmanager
def atomic_path(path: str | os.PathLike, *, prefix: str | None = None, suffix: str = ".part") -> Iterator[str]:
    """Write `path` atomically: yields the name of a new empty file beside it (see `new_temporary`)
    for the caller to write; when the block ends it is renamed onto `path`, and when the block
    raises (Ctrl-C included) it is removed and `path` is untouched. Missing folders are created.
    The one helper for every single file sfsep writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = new_temporary(path, prefix=prefix, suffix=suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to `path` atomically (`atomic_path`); newlines are written as given."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
    return Path(path)


@dataclass(frozen=True)
class WriteReport:
    path: Path
    clipped_samples: int  # samples that were beyond [-1, 1] before clip handling
    scale: float  # the gain applied by --clip rescale (1.0 otherwise)


def subtype_for(fmt: str, bits: int | None = None) -> str:
    """libsndfile subtype for a format and bit depth, or a UsageError for impossible pairs. `bits`
    None means 16 for wav and flac; the lossy formats have no bit depth and take only None."""
    if fmt not in WRITE_FORMATS:
        raise UsageError(f"--format {fmt}: sfsep writes {', '.join(WRITE_FORMATS)}")
    if fmt in LOSSY_FORMATS:
        if bits is not None:
            raise UsageError(f"--bits {bits} with --format {fmt}: a lossy format has no bit depth; leave --bits "
                             f"out ({'--bitrate' if fmt == 'mp3' else '--quality'} sets its size)")
        return SUBTYPES[(fmt, None)]
    bits = 16 if bits is None else bits
    subtype = SUBTYPES.get((fmt, bits))
    if subtype is None:
        allowed = sorted(b for f, b in SUBTYPES if f == fmt)
        raise UsageError(f"--bits {bits} with --format {fmt}: use one of {', '.join(map(str, allowed))}")
    return subtype


def check_encoding(fmt: str, *, bits: int | None = None, bitrate: int | None = None,
                   quality: float | None = None) -> None:
    """A UsageError for settings that do not fit the format, before any work: --bits only for wav
    and flac, --bitrate (a Layer III bitrate in kbps) only for mp3, --quality (0 to 10) only for
    ogg and opus."""
    subtype_for(fmt, bits)
    if bitrate is not None:
        if fmt != "mp3":
            raise UsageError(f"--bitrate {bitrate} with --format {fmt}: only mp3 takes a bitrate"
                             + (" (ogg and opus take --quality)" if fmt in LOSSY_FORMATS else ""))
        allowed = sorted(set(MP3_BITRATES["MPEG-1"]) | set(MP3_BITRATES["MPEG-2"]))
        if bitrate not in allowed:
            raise UsageError(f"--bitrate {bitrate}: use one of {', '.join(map(str, allowed))} (kbps)")
    if quality is not None:
        if fmt not in ("ogg", "opus"):
            raise UsageError(f"--quality {quality:g} with --format {fmt}: only ogg and opus take a quality"
                             + (" (mp3 takes --bitrate)" if fmt == "mp3" else ""))
        if not 0 <= quality <= 10:
            raise UsageError(f"--quality {quality:g}: use a number from 0 to 10")


def writable_rate(fmt: str, rate: int) -> int:
    """The rate stems at `rate` are written at in `fmt`: `rate` itself when the format holds it;
    otherwise the lowest rate it holds above `rate`, or its highest when none is above (mp3 and
    opus: 48 kHz; ogg: 192 kHz above libvorbis' 200 kHz)."""
    if fmt == "ogg":
        return rate if rate <= VORBIS_MAX_RATE else 192_000
    rates = FORMAT_RATES.get(fmt)
    if rates is None or rate in rates:
        return rate
    above = [held for held in rates if held > rate]
    return min(above) if above else max(rates)


def mpeg_version(rate: int) -> str:
    """The MPEG version of an mp3 at `rate`: MPEG-1 at 32-48 kHz, MPEG-2 at 16-24, MPEG-2.5 below."""
    return "MPEG-1" if rate >= 32000 else "MPEG-2" if rate >= 16000 else "MPEG-2.5"


def mp3_bitrate(rate: int, requested: int | None = None) -> int:
    """The constant bitrate (kbps) of an mp3 at `rate`: `requested` when the rate's MPEG version has
    it, else its nearest (the lower one on a tie); None: the highest it has (320 kbps at 32-48 kHz,
    160 at 16-24 kHz, 64 at 8-12 kHz)."""
    choices = MP3_BITRATES[mpeg_version(rate)]
    if requested is None:
        return choices[-1]
    return min(choices, key=lambda bitrate: (abs(bitrate - requested), bitrate))


def encoder_options(fmt: str, rate: int, *, bits: int | None = None, bitrate: int | None = None,
                    quality: float | None = None) -> dict:
    """Keyword arguments of `soundfile.SoundFile` that write `fmt` at `rate` (a UsageError if the
    settings or the rate do not fit the format; see `check_encoding`, `writable_rate`).

    The lossy formats are set through libsndfile's compression level L (0 = best, 1 = smallest):
    - mp3, constant bitrate: libsndfile asks LAME for hi - L (hi - lo) kbps, [lo, hi] = [32, 320]
      for MPEG-1, [8, 160] for MPEG-2, [8, 64] for MPEG-2.5, and LAME takes the nearest standard
      bitrate; we pass the L that gives `mp3_bitrate(rate, bitrate)` (default: the highest).
    - ogg: Vorbis quality 1 - L; we pass L = 1 - Q/10, so --quality Q is oggenc's -q Q. Without
      it libsndfile's default, quality 0.4 (-q 4; about 130 kbps for stereo at 44.1 kHz).
    - opus: libsndfile sets 6 + 250 (1 - L) kbps per channel; we pass L = 1 - Q/10: --quality Q
      is 6 + 25 Q kbps per channel (Q 2: 56, Q 4: 106, Q 10: 256). Without it libopus chooses
      (about 62 kbps per channel at 48 kHz).
    """
    check_encoding(fmt, bits=bits, bitrate=bitrate, quality=quality)
    if writable_rate(fmt, rate) != rate:
        held = ", ".join(map(str, FORMAT_RATES[fmt])) if fmt in FORMAT_RATES else f"at most {VORBIS_MAX_RATE}"
        raise UsageError(f"--format {fmt} holds {held} Hz, not {rate} Hz (resample the stems to "
                         f"{writable_rate(fmt, rate)} Hz first)")
    options = {"format": WRITE_FORMATS[fmt], "subtype": subtype_for(fmt, bits)}
    if fmt == "mp3":
        choices = MP3_BITRATES[mpeg_version(rate)]
        lowest, highest = choices[0], choices[-1]
        # A level of exactly 1 is refused: libsndfile applies it while LAME is still in its VBR
        # mode, where it means quality 10, out of LAME's range; 0.999 still gives the lowest.
        level = min(0.999, (highest - mp3_bitrate(rate, bitrate)) / (highest - lowest))
        options.update(compression_level=level, bitrate_mode="CONSTANT")
    elif fmt in ("ogg", "opus") and quality is not None:
        options["compression_level"] = 1.0 - quality / 10.0
    return options


def _clamp_limit(fmt: str, bits: int | None) -> float:
    """The largest magnitude --clip clamp leaves: full scale for float and the lossy formats (their
    encoders take floats), the largest value the bit depth holds for integer PCM."""
    if fmt in LOSSY_FORMATS:
        return 1.0
    bits = 16 if bits is None else bits
    return 1.0 if bits == 32 else 1.0 - 2.0 ** (1 - bits)


def prepare_for_writing(audio: torch.Tensor, *, bits: int | None, clip: str = "clamp",
                        fmt: str = "wav") -> tuple[np.ndarray, int, float]:
    """Apply clip handling; returns (samples, frames) array, the number of clipped samples and the scale.

    clamp: samples beyond full scale are clamped (demucs clamps to 0.99 to leave headroom for
    the integer conversion; we clamp to the largest value the bit depth holds, `_clamp_limit`).
    rescale: the whole signal is scaled down so its peak fits. none: left as is (only sensible
    with --bits 32 or a lossy format).
    """
    if clip not in CLIP_MODES:
        raise UsageError(f"--clip {clip}: use one of {', '.join(CLIP_MODES)}")
    samples = audio.detach().float().cpu()
    peak = float(samples.abs().max()) if samples.numel() else 0.0
    clipped = int((samples.abs() > 1.0).sum())
    scale = 1.0
    if clip == "rescale" and peak > 1.0:
        scale = 1.0 / peak
        samples = samples * scale
    elif clip == "clamp" and clipped:
        limit = _clamp_limit(fmt, bits)
        samples = samples.clamp(-limit, limit)
    return samples.numpy().T, clipped, scale


def _stage(path: Path, audio: torch.Tensor, rate: int, *, bits: int | None, clip: str) -> tuple[str, WriteReport]:
    """Write to a temporary file beside `path`; returns its name and the report."""
    fmt = path.suffix.lower().lstrip(".")
    options = encoder_options(fmt, rate, bits=bits)
    data, clipped, scale = prepare_for_writing(audio, bits=bits, clip=clip, fmt=fmt)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = new_temporary(path, prefix=f".{path.stem}.", suffix=f".part.{fmt}")
    except OSError as exc:
        raise AudioError(f"{folder}: cannot write in the output folder ({os_error_reason(exc)})") from exc
    try:
        sf.write(temporary, data, rate, **options)
    except BaseException as exc:
        _remove(temporary)
        if isinstance(exc, (OSError, sf.LibsndfileError, RuntimeError)):
            raise AudioError(f"{path}: could not be written ({_write_problem(exc, folder)})") from exc
        raise
    return temporary, WriteReport(path, clipped, scale)


def _remove(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _check_replaceable(targets: Iterable[Path]) -> None:
    """An AudioError when a rename cannot put a file at one of `targets` (it is a folder), so that
    a set is refused before any of its files is replaced."""
    for target in targets:
        if target.is_dir() and not target.is_symlink():
            raise AudioError(f"{target}: is a folder, so the output cannot be written there; nothing was "
                             f"replaced (move the folder away or choose another --out)")


def _publish(staged: list[tuple[str, Path]]) -> None:
    """Rename each staged file onto its target, all or nothing.

    Every target is checked first (`_check_replaceable`). Then, target by target, an existing file
    is moved aside to a hidden backup name in its own folder (`.<stem>.<random>.old.<ext>`) and
    the staged file renamed into place. If any rename fails (or Ctrl-C arrives), what was already
    placed is undone: the backups are renamed back, targets that did not exist before are removed,
    and the error is raised. When all succeeded the backups are removed. A process killed in the
    middle leaves at most the backups, under hidden names beside the stems.
    """
    _check_replaceable(target for _, target in staged)
    placed: list[tuple[Path, str | None]] = []  # (target, its backup; None when it did not exist)
    try:
        for temporary, target in staged:
            backup = None
            if os.path.lexists(target):
                backup = new_temporary(target, prefix=f".{target.stem}.", suffix=f".old{target.suffix}")
                try:
                    os.replace(target, backup)
                except BaseException:
                    _remove(backup)
                    raise
            placed.append((target, backup))
            os.replace(temporary, target)
    except BaseException:
        for target, backup in reversed(placed):
            try:
                if backup is not None:
                    os.replace(backup, target)
                else:
                    os.unlink(target)
            except OSError:
                pass  # best effort: a backup that cannot be renamed back stays under its hidden name
        raise
    for _, backup in placed:
        if backup is not None:
            _remove(backup)


class StagedStems:
    """A set of output files written block by block and published all or nothing.

    Each target is written under a temporary name in its own folder (`.<stem>.<random>.part.<ext>`);
    `publish()` renames them all into place once every one is complete (all or nothing: a
    failing rename puts the previous files back, see `_publish`), `discard()` (or leaving
    the `with` block on an error or Ctrl-C) removes them, so a failure never leaves a
    half-written file under a final name and replaces no existing one. Clip handling is applied
    per block ("clamp", "none"); "rescale" needs the whole stem's peak, so the stems are staged
    as float32 first and scaled into the final format in a second pass at `publish()`. The format
    is each target's extension, encoded as `encoder_options` says (`bits` for wav and flac,
    `bitrate` for mp3, `quality` for ogg and opus); `rate` must be one the format holds
    (`writable_rate`).
    """

    def __init__(self, targets: dict[str, Path], rate: int, channels: int, *, bits: int | None = None,
                 clip: str = "clamp", bitrate: int | None = None, quality: float | None = None):
        if clip not in CLIP_MODES:
            raise UsageError(f"--clip {clip}: use one of {', '.join(CLIP_MODES)}")
        self.targets = {name: Path(path) for name, path in targets.items()}
        self.rate, self.channels, self.bits, self.clip = rate, channels, bits, clip
        self.clipped = {name: 0 for name in targets}
        self.peaks = {name: 0.0 for name in targets}
        self._options = {name: encoder_options(path.suffix.lower().lstrip("."), rate, bits=bits, bitrate=bitrate,
                                               quality=quality) for name, path in self.targets.items()}
        self._limits = {name: _clamp_limit(path.suffix.lower().lstrip("."), bits)
                        for name, path in self.targets.items()}
        self._files: dict[str, tuple[str, sf.SoundFile]] = {}
        _check_replaceable(self.targets.values())  # before any work, not only at publish()
        for name, path in self.targets.items():
            fmt, options = path.suffix.lower().lstrip("."), self._options[name]
            if clip == "rescale":
                fmt, options = "wav", {"format": "WAV", "subtype": "FLOAT"}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = new_temporary(path, prefix=f".{path.stem}.", suffix=f".part.{fmt}")
                self._files[name] = (temporary, None)  # known to discard() before it is opened
                self._files[name] = (temporary, sf.SoundFile(temporary, "w", samplerate=rate, channels=channels,
                                                             **options))
            except BaseException as exc:  # Ctrl-C while staging too: no .part file is left
                self.discard()
                if isinstance(exc, (OSError, sf.LibsndfileError, RuntimeError)):
                    raise AudioError(f"{path.parent}: cannot write in the output folder "
                                     f"({_write_problem(exc, path.parent)})") from exc
                raise

    def __enter__(self) -> "StagedStems":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.discard()

    def write(self, name: str, block: torch.Tensor) -> None:
        """Append (channels, n) samples to stem `name`."""
        samples = block.detach().float().cpu()
        if samples.numel():
            self.clipped[name] += int((samples.abs() > 1.0).sum())
            self.peaks[name] = max(self.peaks[name], float(samples.abs().max()))
        if self.clip == "clamp" and self.clipped[name]:
            samples = samples.clamp(-self._limits[name], self._limits[name])
        temporary, handle = self._files[name]
        try:
            handle.write(samples.numpy().T)
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{self.targets[name]}: could not be written "
                             f"({_write_problem(exc, self.targets[name].parent)})") from exc

    def _close(self) -> None:
        for _, handle in self._files.values():
            if not handle.closed:
                handle.close()

    def publish(self) -> list[WriteReport]:
        """Close every staged file and rename them into place; returns one report per stem."""
        try:
            self._close()
            scales = {name: 1.0 for name in self.targets}
            if self.clip == "rescale":
                self._rescale(scales)
            _publish([(temporary, self.targets[name]) for name, (temporary, _) in self._files.items()])
        except BaseException as exc:
            self.discard()
            if isinstance(exc, (OSError, sf.LibsndfileError, RuntimeError)):
                raise AudioError(f"{next(iter(self.targets.values())).parent}: the stems could not be "
                                 f"written ({_write_problem(exc, next(iter(self.targets.values())).parent)}); "
                                 f"none of the previous ones was replaced") from exc
            raise
        self._files = {}
        return [WriteReport(path, self.clipped[name], scales[name]) for name, path in self.targets.items()]

    def _rescale(self, scales: dict[str, float]) -> None:
        """Second pass of --clip rescale: float32 staging files -> the final format, scaled."""
        for name, (floating, _) in list(self._files.items()):
            path = self.targets[name]
            fmt = path.suffix.lower().lstrip(".")
            scale = 1.0 / self.peaks[name] if self.peaks[name] > 1.0 else 1.0
            scales[name] = scale
            temporary = new_temporary(path, prefix=f".{path.stem}.", suffix=f".part.{fmt}")
            self._files[name] = (temporary, None)
            try:
                with sf.SoundFile(floating) as source, sf.SoundFile(
                        temporary, "w", samplerate=self.rate, channels=self.channels, **self._options[name]) as target:
                    for data in source.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
                        target.write(data * scale)
            finally:
                _remove(floating)

    def discard(self) -> None:
        """Remove every staged file (nothing was published)."""
        for temporary, handle in self._files.values():
            if handle is not None and not handle.closed:
                try:
                    handle.close()
                except Exception:  # closing a file we are about to delete
                    pass
            _remove(temporary)
        self._files = {}


class TrackLock:
    """A lock on one track's set of output files, so that two runs never write them at once.

    The lock file is `.<name>.sfsep.lock` beside the first target (in path order), so there is one
    per track even when the stems of several tracks share a folder. `acquire()` does not wait: it
    returns False while another process (or another thread of this one) holds the lock. It is an
    `fcntl.flock`, which the system drops when its holder ends, so a killed run leaves no stale
    lock; `release()` removes the file. Where there is no fcntl (Windows), or the file system
    refuses flock (some network mounts), every acquire succeeds: the run goes on unlocked.
    """

    def __init__(self, targets: Iterable[str | os.PathLike]):
        self.targets = sorted(Path(target) for target in targets)
        first = self.targets[0]
        self.path = first.parent / f".{first.name}.sfsep.lock"
        self._handle: int | None = None
        self._unsupported = fcntl is None

    @property
    def held(self) -> bool:
        return self._handle is not None or self._unsupported

    def acquire(self) -> bool:
        if self.held:
            return True
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handle = os.open(self.path, flags, 0o666)
            except OSError as exc:
                raise AudioError(f"{self.path.parent}: cannot write in the output folder "
                                 f"({os_error_reason(exc)})") from exc
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                return False
            except OSError:  # no flock on this file system
                os.close(handle)
                _remove(str(self.path))
                self._unsupported = True
                return True
            except BaseException:
                os.close(handle)
                raise
            # The previous holder removes the file when it releases: if that happened after we
            # opened it, we hold a lock on a file nobody else will open. Take the current one.
            try:
                current = os.path.samestat(os.fstat(handle), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                self._handle = handle
                return True
            os.close(handle)

    def remove_leftovers(self) -> list[Path]:
        """Remove the staged files (`.<stem>.<random>.part.<ext>`, see `StagedStems`) of this
        track's targets that a run killed while it held this lock left behind (SIGKILL, the OOM
        killer, a Ray worker that died mid-file); returns them. A live run holds the lock for as
        long as its staged files exist, so while we hold it, any such file is a dead run's. Only
        under a real lock: where the file system refuses flock, nothing tells a dead run's files
        from a live one's, and nothing is removed."""
        if self._handle is None:
            return []
        removed = []
        for target in self.targets:
            pattern = re.compile(rf"\.{re.escape(target.stem)}\.[0-9a-f]{{8}}\.part\.[A-Za-z0-9]+")
            try:
                names = os.listdir(target.parent)
            except OSError:
                continue
            for name in names:
                if pattern.fullmatch(name):
                    _remove(str(target.parent / name))
                    removed.append(target.parent / name)
        return removed

    def release(self) -> None:
        if self._handle is not None:
            _remove(str(self.path))  # while still holding it (see acquire)
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> "TrackLock":
        self.acquire()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.release()


def write_all(
    items: list[tuple[Path, torch.Tensor]], rate: int, *, bits: int | None = None, clip: str = "clamp",
    overwrite: bool = True
) -> list[WriteReport]:
    """Write several files as one unit: all are staged under temporary names first and renamed
    into place only when every one of them was written, so a failure leaves none of them behind
    (and replaces none of the existing ones)."""
    if not overwrite:
        for path, _ in items:
            if Path(path).exists():
                raise AudioError(f"{path}: exists (use --overwrite to replace it)")
    staged: list[tuple[str, WriteReport]] = []
    try:
        for path, audio in items:
            staged.append(_stage(Path(path), audio, rate, bits=bits, clip=clip))
        _publish([(temporary, report.path) for temporary, report in staged])
    except BaseException:
        for temporary, _ in staged:
            _remove(temporary)
        raise
    return [report for _, report in staged]


def write(
    path: str | os.PathLike,
    audio: torch.Tensor,
    rate: int,
    *,
    bits: int | None = None,
    clip: str = "clamp",
    overwrite: bool = True,
) -> WriteReport:
    """Write (channels, samples) to `path` atomically; the format comes from the extension (`bits`
    None: 16 for wav and flac; lossy formats take no bits and their default settings)."""
    return write_all([(Path(path), audio)], rate, bits=bits, clip=clip, overwrite=overwrite)[0]


TEMPLATE_FIELDS = ("model", "track", "trackext", "stem", "ext", "resampler")
"""The fields of a --filename template. Their values are inserted as they are: a track named
`x{0}y` or `{stem}` is a name, never read as a field. {resampler} is the strategy actually used
for the file (conventional, noisy, noise, trainable or none), so runs with different resamplers
can write side by side."""

_FIELD_HELP = "use {model} {track} {trackext} {stem} {ext} {resampler}, and {{ or }} for a literal brace"


def _template_pieces(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, field name or None) pairs; a UsageError for anything but
    the plain fields (no format specs, conversions, indexes or attributes: `{stem:.1}` or
    `{stem[0]}` would make different stems share a name)."""
    if "\0" in template:
        raise UsageError(f"--filename {template!r}: contains a NUL character, which no file name can hold")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(f"--filename {template!r}: malformed ({exc}); {_FIELD_HELP}") from exc
    pieces = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (field not in TEMPLATE_FIELDS or spec or conversion):
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            what = "a field takes no format spec or conversion" if field in TEMPLATE_FIELDS else "unknown field"
            raise UsageError(f"--filename {template!r}: {what}: {shown}; {_FIELD_HELP}")
        pieces.append((literal, field))
    return pieces


def template_fields(template: str) -> set[str]:
    """The fields a --filename template names (a UsageError if it is malformed)."""
    return {field for _, field in _template_pieces(template) if field is not None}


def _fill(pieces: list[tuple[str, str | None]], values: dict[str, str]) -> str:
    return "".join(literal + (values[field] if field is not None else "") for literal, field in pieces)


def _placement_problem(relative: str, ext: str) -> str | None:
    """What is wrong with a filled template as the path of a stem below the output folder:
    "leaves the output folder", "has no extension", "has the extension .x", ... or None."""
    if "\0" in relative:
        return "contains a NUL character"
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts:
        return "leaves the output folder"
    if path.suffix.lower() != f".{ext}".lower():
        return f"has the extension {path.suffix}" if path.suffix else "has no extension"
    return None


def check_template(template: str, *, ext: str, several_tracks: bool = False) -> list[tuple[str, str | None]]:
    """Refuse (UsageError) a --filename template that cannot work whatever the track: an unknown
    or malformed field, no {stem} (the stems would overwrite each other), with `several_tracks`
    no {track} (the inputs would), a path outside the output folder, a file name without the
    extension of the format. Returns the template's pieces."""
    pieces = _template_pieces(template)
    fields = {field for _, field in pieces if field is not None}
    if "stem" not in fields:
        raise UsageError(f"--filename {template!r}: names no {{stem}}, so every stem would be written to the same "
                         f"file; add {{stem}}, e.g. '{{track}}/{{stem}}.{{ext}}'")
    if several_tracks and "track" not in fields:
        raise UsageError(f"--filename {template!r}: names no {{track}}, so the stems of different inputs would be "
                         f"written to the same files; add {{track}}, e.g. '{{track}}/{{stem}}.{{ext}}'")
    # Each field stands for itself: what is left to check is the template's own shape.
    shape = _fill(pieces, {**{field: "{" + field + "}" for field in TEMPLATE_FIELDS}, "ext": ext})
    problem = _placement_problem(shape, ext)
    if problem == "leaves the output folder":
        raise UsageError(f"--filename {template!r}: must stay inside the output folder")
    if problem == "has no extension":
        raise UsageError(f"--filename {template!r}: the file name has no extension: end it in .{{ext}} (.{ext} with "
                         f"--format {ext}), e.g. '{{track}}/{{stem}}.{{ext}}'")
    if problem:
        raise UsageError(f"--filename {template!r}: the file name's extension is {Path(shape).suffix}, not .{ext} "
                         f"(--format {ext}): end it in .{{ext}}")
    return pieces


def output_path(template: str, *, out: Path, model: str, track: str, trackext: str, stem: str, ext: str,
                resampler: str | None = None) -> Path:
    """Fill the --filename template ({model}, {track}, {trackext}, {stem}, {ext}, {resampler})
    below `out`. `resampler` (the strategy used for the file) is needed only by a template that
    names it.

    The values are inserted as they are (braces in a track name are part of the name). A template
    that cannot work is a UsageError (see `check_template`); a track whose name makes a good
    template leave the output folder (a file named `...wav` is the track `..`) is an AudioError."""
    pieces = check_template(template, ext=ext)
    if resampler is None and any(field == "resampler" for _, field in pieces):
        raise ValueError(f"--filename {template!r} names {{resampler}}: pass the resampler used for the file")
    relative = _fill(pieces, {"model": model, "track": track, "trackext": trackext, "stem": stem, "ext": ext,
                              "resampler": resampler or ""})
    problem = _placement_problem(relative, ext)
    if problem:
        raise AudioError(f"track {track!r}: --filename {template!r} gives {relative!r}, which {problem}; "
                         f"rename the file")
    return out / relative
