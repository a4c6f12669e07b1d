"""Evaluation: BSSEval v4 (museval's framewise metrics), whole-signal SDR / SI-SDR, MUSDB18-HQ.

- `bsseval`: `bss_eval_v4` (framewise SDR/ISR/SIR/SAR as museval 0.4.1), `evaluate_track`
  (museval's `eval_mus_track` target grouping), `TrackScores` (museval's per-track JSON),
  `aggregate_tracks` (median of frame medians, mean, stderr).
- `metrics`: `utterance_sdr` (the MDX/MSST "SDR") and `si_sdr`.
- `musdb`: `list_tracks` over a MUSDB18-HQ folder (subsets test/train/valid), `MusdbTrack`.
"""

from sfsep.evaluate.bsseval import (
    METRIC_NAMES,
    BSSEvalResult,
    SilentSourceError,
    TrackAggregate,
    TrackScores,
    aggregate_tracks,
    bss_eval_v4,
    evaluate_track,
)
from sfsep.evaluate.metrics import si_sdr, utterance_sdr
from sfsep.evaluate.musdb import MusdbTrack, list_tracks, resolve_root

__all__ = [
    "METRIC_NAMES",
    "BSSEvalResult",
    "SilentSourceError",
    "TrackAggregate",
    "TrackScores",
    "aggregate_tracks",
    "bss_eval_v4",
    "evaluate_track",
    "si_sdr",
    "utterance_sdr",
    "MusdbTrack",
    "list_tracks",
    "resolve_root",
]
