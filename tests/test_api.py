"""The library API: `from sfsep import Separator`, the README's example, settings that check themselves."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from conftest import tone_mix

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- library-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README has no library example"
    return match.group(1)


def test_the_readme_library_example_runs_as_written(tmp_path):
    """The README's snippet, verbatim, in a fresh interpreter (model "classic": no weights)."""
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "demo_8k.wav", tmp_path / "examples" / "demo_8k.wav")
    (tmp_path / "example.py").write_text(_readme_example())
    env = {**os.environ, "SFSEP_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "none" in done.stdout and "done" in done.stdout and "htdemucs" in done.stdout, done.stdout
    for stem in ("vocals", "drums", "bass", "other"):
        info = sf.info(tmp_path / "separated" / "classic" / "demo_8k" / f"{stem}.flac")
        assert info.samplerate == 8000


def test_one_separator_class_loads_once_and_separates_tensors_and_files(tmp_path):
    import sfsep
    import sfsep.pipeline
    from sfsep import Separator

    assert Separator is sfsep.pipeline.Separator  # one class of that name, internal callers' too
    separator = Separator("classic", device="cpu", resampler="conventional", seed=3)
    assert separator.settings.resampler == "conventional" and separator.settings.seed == 3
    mix = torch.from_numpy(tone_mix(16000, 0.5).T.copy())
    result = separator.separate_tensor(mix, 16000)
    assert list(result.stems) == ["vocals", "drums", "bass", "other"]
    assert all(stem.shape == mix.shape for stem in result.stems.values())
    assert (result.input_rate, result.model_rate, result.strategy) == (16000, 16000, "none")
    song = tmp_path / "song.wav"
    sf.write(song, tone_mix(8000, 0.5), 8000)
    done = separator.separate_file(song, out=tmp_path / "out", bits=24)
    assert done.status == "done" and sf.info(tmp_path / "out" / "classic" / "song" / "bass.wav").subtype == "PCM_24"
    again = separator.separate_file(song, out=tmp_path / "out")
    assert again.status == "skipped"
    report = separator.separate_files([song, tmp_path / "absent.wav"], out=tmp_path / "many")
    assert [r.status for r in report.results] == ["done", "failed"]
    assert "absent.wav" in report.results[1].error
    names = {row["name"]: row for row in Separator.models()}
    assert "demucs" in names["htdemucs"]["aliases"] and names["classic"]["cached"] is None


def test_settings_and_output_options_check_themselves():
    """The command line's checks hold for library callers too (they were only in the CLI)."""
    from sfsep import OutputOptions, Separator, Settings
    from sfsep.errors import UsageError

    for bad in ({"shifts": -1}, {"sigma": -0.1}, {"chunk_seconds": 0}, {"resampler": "cubic"},
                {"precision": "fp8"}, {"batch_size": 0}, {"overlap": 1.5}):
        with pytest.raises(UsageError):
            Settings(**bad)
    with pytest.raises(UsageError, match="--sigma"):
        Separator("classic", sigma=-1)
    for bad in ({"format": "aac"}, {"bits": 12}, {"clip": "fold"}, {"filename": "{track}.{ext}"}):
        with pytest.raises(UsageError):
            OutputOptions(**bad)


def test_unknown_model_names_suggest_close_ones():
    from sfsep import Separator
    from sfsep.errors import ModelError, UsageError

    with pytest.raises(UsageError, match="did you mean 'htdemucs'") as caught:
        Separator("htdemcus")
    assert isinstance(caught.value, ModelError) and caught.value.exit_code == 2


def test_reading_the_package_does_not_import_torch():
    code = "import sys, sfsep; sfsep.__version__; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
