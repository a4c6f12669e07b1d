"""BSSEval v4, museval-format JSON, aggregation and whole-signal metrics.

Oracles:
- shared/fixtures/bsseval_museval.npz (+ .json, _trackstore.json): museval 0.4.1 on an 8-s
  synthetic 4-source stereo track of tones and noise bursts.
- BROADBAND_MUSEVAL below: museval 0.4.1 `metrics.bss_eval` on `broadband_case()` (seeded
  coloured noise), printed with 10 decimals.

Why ISR/SIR/SAR are checked on the broadband case and not on the 8-s fixture: the fixture's
sources are sums of pure tones, so the 4096 x 4096 Gram matrix of the delayed references is
numerically singular (condition number ~1e21) and museval's own ISR/SIR/SAR on it are
round-off: museval 0.4.1 on the very same arrays moves by up to 7.9 dB (ISR), 0.09 dB (SIR)
when BLAS runs on 1 thread instead of 2, and by 2.2 / 0.85 / 5.7 dB (ISR/SIR/SAR) when every
signal is multiplied by 3 (which leaves every ratio unchanged mathematically). SDR does not
depend on the filters in the images version, so it is checked on the fixture exactly; on the
well-conditioned broadband case museval is stable (x3 rescale: 1e-14 dB; 1e-9 relative noise:
3e-9 dB) and all four metrics are checked to 1e-6 dB.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sfsep.errors import SfsepError
from sfsep.evaluate.bsseval import (
    SilentSourceError,
    TrackScores,
    _cross_correlations,
    _solve_regularized,
    aggregate_tracks,
    bss_eval_v4,
    evaluate_track,
    nanmedian,
)
from sfsep.evaluate.metrics import si_sdr, utterance_sdr

torch.set_num_threads(2)

SOURCES = ["vocals", "bass", "drums", "other"]  # fixture order


def shared_dir() -> Path:
    override = os.environ.get("SFSEP_SHARED")
    path = Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared"
    assert path.is_dir(), f"shared folder not found at {path} (set SFSEP_SHARED)"
    return path


@pytest.fixture(scope="module")
def fixture():
    folder = shared_dir() / "fixtures"
    data = np.load(folder / "bsseval_museval.npz")
    meta = json.loads((folder / "bsseval_museval.json").read_text())
    return data, meta


@pytest.fixture(scope="module")
def fixture_result(fixture):
    data, _ = fixture
    refs = torch.from_numpy(data["refs"]).permute(0, 2, 1)  # (S, T, C) -> (S, C, T)
    ests = torch.from_numpy(data["ests"]).permute(0, 2, 1)
    return bss_eval_v4(refs, ests, window=44100, hop=44100, source_names=SOURCES)


# ---------------------------------------------------------------------------- the fixture


def test_fixture_sdr_framewise_and_nan_pattern(fixture, fixture_result):
    data, _ = fixture
    for name, ours in fixture_result.as_dict().items():
        expected = data[name.lower()]
        ours = ours.numpy()
        assert ours.shape == expected.shape == (4, 8)
        assert np.array_equal(np.isnan(ours), np.isnan(expected)), name
        assert np.isfinite(ours[~np.isnan(ours)]).all(), name
    sdr = fixture_result.sdr.numpy()
    valid = ~np.isnan(data["sdr"])
    np.testing.assert_allclose(sdr[valid], data["sdr"][valid], rtol=0, atol=1e-6)
    # frames 3 and 4: the vocals reference is exactly zero there -> NaN for every source
    assert np.isnan(sdr[:, 3:5]).all() and not np.isnan(sdr[:, [0, 1, 2, 5, 6, 7]]).any()


def test_fixture_sdr_medians(fixture, fixture_result):
    data, meta = fixture
    medians = fixture_result.median()["SDR"].numpy()
    np.testing.assert_allclose(medians, data["agg_median"][:, 0], atol=0.01)
    expected = [meta["aggregate_nanmedian"][name]["SDR"] for name in SOURCES]
    np.testing.assert_allclose(medians, expected, atol=0.01)


def test_iterable_result_order(fixture_result):
    sdr, isr, sir, sar = fixture_result
    assert sdr is fixture_result.sdr and isr is fixture_result.isr
    assert sir is fixture_result.sir and sar is fixture_result.sar
    assert fixture_result.source_names == tuple(SOURCES)


# ------------------------------------------------------------- well-conditioned museval oracle


def broadband_case() -> tuple[np.ndarray, np.ndarray]:
    """3 sources x 2 channels x 27000 samples of coloured noise; source 1 silent on
    [6000, 14500) (covers window 1 exactly); estimates 500 samples short (zero-padded)."""
    rng = np.random.default_rng(2024)
    num_sources, num_channels, length = 3, 2, 27000
    refs = np.empty((num_sources, num_channels, length))
    for j in range(num_sources):
        for c in range(num_channels):
            fir = rng.standard_normal(16) * np.exp(-np.arange(16) / (2 + j))
            refs[j, c] = np.convolve(rng.standard_normal(length), fir)[:length]
    refs[1, :, 6000:14500] = 0.0
    ests = np.empty((num_sources, num_channels, length - 500))
    for j in range(num_sources):
        for c in range(num_channels):
            mixed = 0.9 * refs[j, c] + 0.15 * np.roll(refs[j, 1 - c], 2)
            mixed = mixed + sum(0.1 * (k + 1) * refs[k, c] for k in range(num_sources) if k != j)
            mixed = mixed + 0.05 * rng.standard_normal(length)
            ests[j, c] = mixed[: length - 500]
    return refs, ests


# museval 0.4.1: metrics.bss_eval(refs.transpose(0, 2, 1), padded ests.transpose(0, 2, 1),
# window=8000, hop=6000, compute_permutation=False, filters_len=256,
# framewise_filters=False, bsseval_sources_version=False); order SDR, ISR, SIR, SAR.
NAN = math.nan
BROADBAND_MUSEVAL = {
    "SDR": [
        [5.8685711193, NAN, 5.9369439991, 5.6732993568],
        [4.5301354357, NAN, 4.1890321675, 5.7154449323],
        [13.0664719481, NAN, 13.0976100271, 12.7409298016],
    ],
    "ISR": [
        [14.1182188004, NAN, 14.0927107381, 14.1318209402],
        [13.6670311108, NAN, 13.7617909176, 13.7653823690],
        [14.5162490479, NAN, 14.5095555463, 14.5373586777],
    ],
    "SIR": [
        [5.7409368495, NAN, 5.8623590466, 5.5464757380],
        [4.2639822996, NAN, 3.8333541712, 5.6251432421],
        [17.0323193358, NAN, 17.2385685683, 16.0778526270],
    ],
    "SAR": [
        [25.2657464199, NAN, 25.3882086664, 24.9891454395],
        [23.8841143114, NAN, 23.7474874577, 24.4135019578],
        [26.4466359448, NAN, 26.3811833835, 26.0399247887],
    ],
}


def test_broadband_all_metrics_match_museval():
    refs, ests = broadband_case()
    result = bss_eval_v4(
        torch.from_numpy(refs), torch.from_numpy(ests), window=8000, hop=6000, filters_len=256
    )
    for name, ours in result.as_dict().items():
        expected = np.array(BROADBAND_MUSEVAL[name])
        ours = ours.numpy()
        # 27000 samples, window 8000, hop 6000: 4 windows, the trailing 1000 samples dropped
        assert ours.shape == (3, 4)
        assert np.array_equal(np.isnan(ours), np.isnan(expected)), name
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6, equal_nan=True, err_msg=name)


# ------------------------------------------------------------------- definitions and errors


def _brute_force_v4(refs: np.ndarray, ests: np.ndarray, window: int, hop: int, taps: int):
    """museval's v4 images metrics straight from the definitions, for tiny inputs: the
    filters from the explicit matrix of delayed references, every window's references
    zero-padded and convolved on their own. refs, ests: (S, C, T) float64."""
    sources, channels, length = refs.shape
    padded = length + taps - 1
    # delayed[n, (j, c, a)] = r[j, c](n - a), n over the zero-padded track
    delayed = np.zeros((padded, sources, channels, taps))
    for a in range(taps):
        delayed[a : a + length, :, :, a] = refs.transpose(2, 0, 1)
    delayed = delayed.reshape(padded, -1)
    targets = np.zeros((padded, sources * channels))
    targets[:length] = ests.reshape(sources * channels, length).T
    eps = np.finfo(np.float64).eps
    gram = delayed.T @ delayed + eps * np.eye(delayed.shape[1])
    filters_all = np.linalg.solve(gram, delayed.T @ targets)  # rows (j, c, a), cols (i, d)
    block = channels * taps
    filters_own = [
        np.linalg.solve(
            gram[j * block : (j + 1) * block, j * block : (j + 1) * block],
            (delayed.T @ targets)[j * block : (j + 1) * block, j * channels : (j + 1) * channels],
        )
        for j in range(sources)
    ]
    if window < length:
        count, width = (length - window + hop) // hop, window
    else:
        count, width = 1, length
    scores = np.full((4, sources, count), np.nan)
    for t in range(count):
        part = slice(t * hop, t * hop + width)
        if (refs[:, :, part].sum(axis=1) == 0).all(axis=-1).any() or (
            ests[:, :, part].sum(axis=1) == 0
        ).all(axis=-1).any():
            continue
        rows = np.zeros((width + taps - 1, sources, channels, taps))
        for a in range(taps):
            rows[a : a + width, :, :, a] = refs[:, :, part].transpose(2, 0, 1)
        rows = rows.reshape(width + taps - 1, -1)
        proj_all = rows @ filters_all  # (n, (i, d))
        for i in range(sources):
            own_rows = rows[:, i * block : (i + 1) * block]
            proj_own = own_rows @ filters_own[i]  # (n, d)
            full = proj_all[:, i * channels : (i + 1) * channels]
            true = np.zeros_like(full)
            true[:width] = refs[i, :, part].T
            estimate = np.zeros_like(full)
            estimate[:width] = ests[i, :, part].T

            def ratio(num, den):
                return 10 * np.log10(np.sum(num**2) / np.sum(den**2))

            scores[:, i, t] = (
                ratio(true, estimate - true),
                ratio(true, proj_own - true),
                ratio(proj_own, full - proj_own),
                ratio(full, estimate - full),
            )
    return scores


@pytest.mark.parametrize(
    "window, hop",
    [(120, 120), (120, 45), (5, 3), (7, 11), (2000, 500)],
    ids=["disjoint", "overlapping", "window-shorter-than-filter", "gaps", "whole-track"],
)
def test_windows_match_the_definition(window, hop):
    # The projections are computed from one whole-track filtering minus edge corrections;
    # this checks them against every window filtered on its own, including windows shorter
    # than the filters and windows with gaps between them.
    generator = torch.Generator().manual_seed(3)
    refs = torch.randn(2, 2, 400, generator=generator, dtype=torch.float64)
    refs = torch.nn.functional.conv1d(
        refs.reshape(4, 1, -1), torch.tensor([[[1.0, 0.6, -0.3]]], dtype=torch.float64), padding=1
    ).reshape(2, 2, -1)
    ests = 0.9 * refs + 0.2 * refs.flip(0) + 0.05 * torch.randn(2, 2, 400, generator=generator, dtype=torch.float64)
    refs[1, :, 200:245] = 0.0  # a silent stretch: some windows NaN
    expected = _brute_force_v4(refs.numpy(), ests.numpy(), window, hop, taps=9)
    ours = torch.stack(list(bss_eval_v4(refs, ests, window, hop, filters_len=9))).numpy()
    assert ours.shape == expected.shape
    assert np.array_equal(np.isnan(ours), np.isnan(expected))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-8, equal_nan=True)


@pytest.mark.parametrize(
    "length, max_lag, block_fft",
    [(1000, 9, 64), (1003, 9, 32), (110, 9, 64), (111, 9, 64), (50, 9, 64), (5, 9, 128),
     (300, 0, 16), (300, 1, 16), (20000, 100, 512)],
    ids=["blocks", "short-blocks", "one-block-and-a-bit", "tail-shorter-than-lags",
         "single-block", "shorter-than-lags", "lag-0", "lag-1", "long"],
)
def test_cross_correlations_match_direct_sums(length, max_lag, block_fft):
    # The whole-track correlations come from per-block FFTs plus short FFTs over the
    # samples that straddle each block boundary; every layout of blocks, boundaries and
    # track ends is checked against the direct sums, with float32 and float64 inputs and
    # a channels-last (non-contiguous) view.
    generator = torch.Generator().manual_seed(length + max_lag)
    left = torch.randn(length, 3, generator=generator, dtype=torch.float64).T  # (3, T) view
    others = torch.randn(2, length, generator=generator).to(torch.float32)
    right = torch.cat((left, others.double()))
    expected = torch.zeros(3, 5, max_lag + 1, dtype=torch.float64)
    for k in range(max_lag + 1):
        expected[..., k] = left[:, None, : max(length - k, 0)].mul(right[None, :, k:]).sum(-1)
    ours = _cross_correlations(left, others, max_lag, block_fft)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-11)


def test_regularized_solve_is_museval_lu_then_lstsq_on_a_fresh_matrix():
    # The solver overwrites the matrix it is given (no 128 MB copy) and asks `rebuild` for a
    # fresh one when LU fails; each path must solve the original system as numpy does.
    eps = np.finfo(np.float64).eps
    generator = torch.Generator().manual_seed(5)
    rhs = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    factor = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    basis, _ = torch.linalg.qr(factor)
    spectrum = torch.tensor([3.0, 2.0, -1.0, 1.5, -2.5, 1.0], dtype=torch.float64)
    for matrix in (factor @ factor.T + torch.eye(6, dtype=torch.float64),  # definite
                   basis @ torch.diag(spectrum) @ basis.T):  # symmetric indefinite
        matrix = 0.5 * (matrix + matrix.T)
        solution = _solve_regularized(matrix.clone(), matrix.clone, rhs)
        expected = np.linalg.solve(matrix.numpy() + eps * np.eye(6), rhs.numpy())
        np.testing.assert_allclose(solution.numpy(), expected, rtol=1e-10, atol=0)

    # exactly singular once eps is added: LU fails, least squares on the matrix without eps
    singular = torch.diag(torch.tensor([-eps, 1.0, 2.0], dtype=torch.float64))
    singular[1, 2] = singular[2, 1] = 0.5
    solution = _solve_regularized(singular.clone(), singular.clone, rhs[:3])
    expected = np.linalg.lstsq(singular.numpy(), rhs[:3].numpy(), rcond=None)[0]
    np.testing.assert_allclose(solution.numpy(), expected, rtol=1e-12, atol=0)


def _small_case(length=3000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    refs = torch.randn(2, 2, length, generator=generator, dtype=torch.float64)
    ests = refs + 0.1 * torch.randn(2, 2, length, generator=generator, dtype=torch.float64)
    return refs, ests


def test_silent_source_over_whole_track_raises_naming_it():
    refs, ests = _small_case()
    refs[1] = 0.0
    with pytest.raises(SilentSourceError, match="reference 'bass'") as info:
        bss_eval_v4(refs, ests, 1000, 1000, filters_len=16, source_names=["vocals", "bass"])
    assert isinstance(info.value, SfsepError)
    refs, ests = _small_case()
    ests[0, 0] = 1.0
    ests[0, 1] = -1.0  # L = -R: the channel sum is zero everywhere -> silent (museval)
    with pytest.raises(SilentSourceError, match="estimate source 0"):
        bss_eval_v4(refs, ests, 1000, 1000, filters_len=16)


def test_window_silence_is_channel_sum_zero():
    refs, ests = _small_case()
    refs[0, 0, 1000:2000] = 0.5
    refs[0, 1, 1000:2000] = -0.5  # channel sum zero on window 1 -> NaN for all sources
    ests[1, 0, 2000:3000] = 0.0  # one channel silent on window 2 -> not silent
    result = bss_eval_v4(refs, ests, 1000, 1000, filters_len=16)
    for values in result.as_dict().values():
        assert torch.isnan(values[:, 1]).all()
        assert not torch.isnan(values[:, [0, 2]]).any()


def test_framing_padding_and_truncation():
    refs, ests = _small_case(length=3500)
    # trailing partial window dropped: floor((3500 - 1000 + 1000) / 1000) = 3 windows
    assert bss_eval_v4(refs, ests, 1000, 1000, filters_len=16).sdr.shape == (2, 3)
    # overlapping windows: floor((3500 - 1000 + 500) / 500) = 6
    assert bss_eval_v4(refs, ests, 1000, 500, filters_len=16).sdr.shape == (2, 6)
    # window longer than the track: one window, the whole track
    whole = bss_eval_v4(refs, ests, 10_000, 10_000, filters_len=16)
    assert whole.sdr.shape == (2, 1)
    error = ((refs - ests) ** 2).sum(dim=(1, 2))
    expected_sdr = 10 * torch.log10((refs**2).sum(dim=(1, 2)) / error)
    torch.testing.assert_close(whole.sdr[:, 0], expected_sdr, rtol=0, atol=1e-9)
    # estimates are truncated / zero-padded to the reference length
    longer = torch.cat([ests, torch.ones(2, 2, 100, dtype=ests.dtype)], dim=-1)
    shorter = ests[..., :3300]
    padded = torch.nn.functional.pad(shorter, (0, 200))
    base = bss_eval_v4(refs, ests, 1000, 1000, filters_len=16)
    for a, b in zip(bss_eval_v4(refs, longer, 1000, 1000, filters_len=16), base):
        torch.testing.assert_close(a, b)
    for a, b in zip(
        bss_eval_v4(refs, shorter, 1000, 1000, filters_len=16),
        bss_eval_v4(refs, padded, 1000, 1000, filters_len=16),
    ):
        torch.testing.assert_close(a, b)


def test_perfect_estimate_gives_inf_and_float32_inputs_work():
    refs, _ = _small_case()
    result = bss_eval_v4(refs.float(), refs.float(), 1000, 1000, filters_len=16)
    assert result.sdr.dtype == torch.float64
    assert torch.isinf(result.sdr).all() and (result.sdr > 0).all()


def test_nanmedian_is_numpy_style():
    values = torch.tensor(
        [[1.0, 4.0, NAN, 2.0, 10.0], [NAN, NAN, NAN, NAN, NAN], [3.0, NAN, 1.0, NAN, NAN]]
    )
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmedian(values.numpy().astype(np.float64), axis=1)
    np.testing.assert_array_equal(nanmedian(values).numpy(), expected)  # 3.0, NaN, 2.0


# ------------------------------------------------------------------------------ JSON format


def _museval_track(data) -> TrackScores:
    scores = TrackScores("synthetic_8s", win=1.0, hop=1.0, museval_version="0.4.1")
    for index, name in enumerate(SOURCES):
        scores.add_target(
            name, data["sdr"][index], data["isr"][index], data["sir"][index], data["sar"][index]
        )
    return scores


def test_json_writer_reproduces_museval_file_byte_for_byte(fixture):
    data, _ = fixture
    expected = (shared_dir() / "fixtures" / "bsseval_museval_trackstore.json").read_text()
    assert _museval_track(data).to_json() == expected


def test_json_from_our_result_matches_museval_structure_and_sdr(fixture_result, tmp_path):
    path = TrackScores.from_result("synthetic_8s", fixture_result, rate=44100).save(
        tmp_path / "test" / "synthetic_8s.json"
    )
    ours = json.loads(path.read_text())
    museval = json.loads((shared_dir() / "fixtures" / "bsseval_museval_trackstore.json").read_text())
    assert ours.keys() == museval.keys()
    assert ours["museval_version"].startswith("0.4.1+sfsep.")
    assert [t["name"] for t in ours["targets"]] == [t["name"] for t in museval["targets"]]
    for mine, theirs in zip(ours["targets"], museval["targets"]):
        assert len(mine["frames"]) == len(theirs["frames"]) == 8
        for a, b in zip(mine["frames"], theirs["frames"]):
            assert (a["time"], a["duration"]) == (b["time"], b["duration"])
            assert list(a["metrics"]) == list(b["metrics"]) == ["SDR", "SIR", "SAR", "ISR"]
            for metric in a["metrics"]:
                assert math.isnan(a["metrics"][metric]) == math.isnan(b["metrics"][metric])
            if not math.isnan(b["metrics"]["SDR"]):
                assert abs(a["metrics"]["SDR"] - b["metrics"]["SDR"]) <= 1e-4
    assert "NaN" in path.read_text()  # bare token, as museval writes


def test_quantization_rules():
    scores = TrackScores("t", win=0.5, hop=0.25)
    scores.add_target(
        "x", [0.015625, -2.5e-7, math.inf], [0.046875, 1.000005, 0.3], [NAN, 1, 2], [3, -math.inf, 4]
    )
    text = scores.to_json()
    document = json.loads(text)
    frames = document["targets"][0]["frames"]
    assert [f["time"] for f in frames] == [0.0, 0.25, 0.5]
    assert all(f["duration"] == 0.5 for f in frames)
    # the exact binary value is rounded half-even (Decimal.quantize, as museval):
    # 2^-6 = 0.015625 and 3/64 = 0.046875 are exact ties; 1.000005 is stored just above the tie
    assert '"SDR": 0.01562,' in text and '"ISR": 0.04688' in text and '"ISR": 1.00001' in text
    assert '"SDR": -0.00000,' in text
    assert '"SDR": NaN' in text and '"SAR": NaN' in text and '"SIR": NaN' in text
    assert scores.targets["x"]["SDR"][2] != scores.targets["x"]["SDR"][2]  # inf stored as NaN


def test_load_round_trip(fixture, tmp_path):
    data, _ = fixture
    original = _museval_track(data)
    loaded = TrackScores.load(original.save(tmp_path / "synthetic_8s.json"))
    assert loaded.track_name == "synthetic_8s" and (loaded.win, loaded.hop) == (1.0, 1.0)
    assert loaded.to_json() == original.to_json()


def test_evaluate_track_uses_museval_target_grouping():
    generator = torch.Generator().manual_seed(3)
    names = ["vocals", "drums", "bass", "other"]
    refs = {name: torch.randn(2, 2400, generator=generator, dtype=torch.float64) for name in names}
    refs["accompaniment"] = refs["drums"] + refs["bass"] + refs["other"]
    ests = {name: refs[name] + 0.2 * torch.randn(2, 2400, generator=generator, dtype=torch.float64)
            for name in refs}
    ests["bass"] = ests["bass"][:, :2300]  # zero-padded to the reference length
    scores = evaluate_track("t", refs, ests, rate=800, win=1.0, hop=0.5, filters_len=16)
    # museval's order: the joint group without vocals, then vocals and accompaniment
    assert list(scores.targets) == ["drums", "bass", "other", "vocals", "accompaniment"]
    assert (scores.win, scores.hop) == (1.0, 0.5)
    joint = bss_eval_v4(
        torch.stack([refs[n] for n in names]),
        torch.stack([torch.nn.functional.pad(ests[n], (0, 2400 - ests[n].shape[-1])) for n in names]),
        800, 400, filters_len=16,
    )
    pair = bss_eval_v4(
        torch.stack([refs["vocals"], refs["accompaniment"]]),
        torch.stack([ests["vocals"], ests["accompaniment"]]), 800, 400, filters_len=16,
    )
    expected = {"drums": (joint, 1), "bass": (joint, 2), "other": (joint, 3),
                "vocals": (pair, 0), "accompaniment": (pair, 1)}
    for name, (result, index) in expected.items():
        assert len(scores.targets[name]["SDR"]) == 5  # floor((2400 - 800 + 400) / 400)
        for metric, values in result.as_dict().items():
            np.testing.assert_allclose(
                scores.targets[name][metric], values[index].numpy(), atol=1e-5, err_msg=name
            )
    with pytest.raises(ValueError, match="at least two targets"):
        evaluate_track("t", refs, {"vocals": ests["vocals"]}, rate=800, filters_len=16)


# ------------------------------------------------------------------------------ aggregation


def test_aggregation_matches_museval_evalstore(fixture):
    _, meta = fixture
    loaded = TrackScores.load(shared_dir() / "fixtures" / "bsseval_museval_trackstore.json")
    aggregate = aggregate_tracks([loaded])
    for key, expected in meta["aggregate_pandas_evalstore"].items():
        target, metric = key.split("/")
        assert aggregate[target][metric].median == pytest.approx(expected, abs=1e-9)
        assert aggregate[target][metric].count == 1


def test_aggregation_over_tracks_median_mean_stderr():
    tracks = []
    for index, frames in enumerate([[1.0, 3.0, NAN], [5.0, 7.0, 9.0], [2.0, NAN, NAN], [NAN, NAN]]):
        scores = TrackScores(f"track{index}")
        scores.add_target("vocals", frames, frames, frames, frames)
        tracks.append(scores)
    aggregate = aggregate_tracks(tracks)["vocals"]["SDR"]
    # per-track medians 2, 7, 2 (the all-NaN track is left out)
    assert aggregate.count == 3
    assert aggregate.median == pytest.approx(2.0)
    assert aggregate.mean == pytest.approx(11 / 3)
    assert aggregate.stderr == pytest.approx(np.std([2.0, 7.0, 2.0], ddof=1) / math.sqrt(3))


# -------------------------------------------------------------------- whole-signal metrics


def test_utterance_sdr_known_values():
    reference = torch.ones(1, 2, 100, dtype=torch.float64)
    estimate = reference * 0.9  # error energy 0.01 * 200 = 2, signal 200
    expected = 10 * math.log10((200 + 1e-8) / (2 + 1e-8))
    assert utterance_sdr(reference, estimate).item() == pytest.approx(expected, abs=1e-12)
    assert utterance_sdr(reference, estimate).item() == pytest.approx(20.0, abs=1e-6)
    # perfect estimate: finite because of eps; silent pair: 0 dB
    assert utterance_sdr(reference, reference).item() == pytest.approx(10 * math.log10(200 / 1e-8 + 1))
    assert utterance_sdr(torch.zeros(1, 5), torch.zeros(1, 5)).item() == 0.0
    # batch of sources
    batch = utterance_sdr(torch.ones(3, 2, 10), torch.zeros(3, 2, 10))
    assert batch.shape == (3,)
    torch.testing.assert_close(batch, torch.zeros(3, dtype=torch.float64))  # error = signal


def test_si_sdr_known_values():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(2, 1000, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 1000, generator=generator, dtype=torch.float64)
    noise = noise - (noise * reference).sum() / (reference**2).sum() * reference  # orthogonal
    noise = noise * math.sqrt((reference**2).sum() / (noise**2).sum()) / 10  # -20 dB
    estimate = 3.0 * (reference + noise)
    # scaled target 3*ref, error 3*noise, energy ratio 100 -> 20 dB, whatever the gain
    assert si_sdr(reference, estimate).item() == pytest.approx(20.0, abs=1e-6)
    assert si_sdr(reference, estimate / 3).item() == pytest.approx(20.0, abs=1e-6)
    # the utterance SDR does see the gain error
    assert utterance_sdr(reference, estimate).item() < 0
    with pytest.raises(ValueError):
        si_sdr(reference, estimate[:, :10])
