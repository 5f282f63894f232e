"""ECG- and PPG-like recordings driven by one beat sequence per patient, written as EDF+.

ECG (mV): P-QRS-T as Gaussian bumps at each beat; AF drops the P wave, adds fibrillatory
f-waves and makes RR intervals irregularly irregular. PPG (a.u.): a systolic pulse plus a
dicrotic wave a pulse-transit time after each R peak, weaker after a short RR interval.
Both carry baseline wander and noise. Patient traits set the mean heart rate, the T-wave
amplitude relative to the R wave, and the PPG pulse amplitude and dicrotic ratio (``traits.py``).
"""

from __future__ import annotations

import datetime as _dt
import warnings
from fractions import Fraction

import numpy as np

ECG_RANGE = 5.0    # mV, EDF physical min/max (clipped beyond)
PPG_RANGE = 5.0
START = _dt.datetime(2024, 1, 1, 8, 0, 0)   # fixed so two runs give identical files
T_WAVE_RATIO = 0.22    # ECG T-wave / R-wave amplitude at a neutral trait (T was 0.3 mV flat, R 0.8-1.4 mV)
DICROTIC_RATIO = 0.35  # PPG dicrotic / systolic amplitude at a neutral trait


def beat_times(af: bool, seconds: float, rng: np.random.Generator,
               hr: float | None = None) -> tuple[np.ndarray, float]:
    """R-peak times (s) covering ``[-1, seconds + 1]`` and the mean heart rate (bpm).

    ``hr`` is the mean rate (set by the heart-rate trait); without it the rate is drawn, sinus
    U(55, 90), AF U(75, 115). Sinus rhythm: RR varies a few percent with breathing. AF:
    log-normal RR with ~22 % spread around the same mean.
    """
    if hr is None:
        hr = rng.uniform(75, 115) if af else rng.uniform(55, 90)
    rr0 = 60.0 / hr
    resp_f, resp_phase = rng.uniform(0.2, 0.33), rng.uniform(0, 2 * np.pi)
    t = -1.0 + rng.uniform(0, rr0)
    out = []
    while t < seconds + 1.0:
        out.append(t)
        if af:
            rr = rr0 * np.exp(rng.normal(-0.024, 0.22))
        else:
            rr = rr0 * (1 + 0.04 * np.sin(2 * np.pi * resp_f * t + resp_phase) + rng.normal(0, 0.015))
        t += float(np.clip(rr, 0.3, 2.0))
    return np.array(out), hr


def _bumps(t: np.ndarray, centres: np.ndarray, amps: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Sum of Gaussian bumps, ``(T,)``; centres/amps are per beat."""
    width = np.broadcast_to(width, centres.shape)
    d = (t[:, None] - centres[None, :]) / width[None, :]
    return (amps[None, :] * np.exp(-0.5 * d * d)).sum(1)


def synthesize(beats: np.ndarray, af: bool, n: int, rate: float, rng: np.random.Generator,
               t_wave_scale: float = 1.0, ppg_scale: float = 1.0,
               dicrotic: float = DICROTIC_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """ECG (mV) and PPG (a.u.) of ``n`` samples at ``rate`` Hz for the given beats.

    Trait-driven shape: the T wave is ``T_WAVE_RATIO x R amplitude x t_wave_scale``; the PPG pulse is
    scaled by ``ppg_scale`` and its dicrotic wave is ``dicrotic`` x the systolic pulse.
    """
    t = np.arange(n) / rate
    rr = np.diff(beats, prepend=beats[0] - np.median(np.diff(beats)))
    r_amp = rng.uniform(0.8, 1.4)
    ecg = _bumps(t, beats, np.full(len(beats), r_amp), 0.010)
    ecg += _bumps(t, beats - 0.035, np.full(len(beats), -0.12 * r_amp), 0.010)
    ecg += _bumps(t, beats + 0.035, np.full(len(beats), -0.30 * r_amp), 0.012)
    # the T wave moves with the RR interval (QT shortens at high rates)
    t_amp = T_WAVE_RATIO * r_amp * t_wave_scale
    ecg += _bumps(t, beats + 0.22 * np.sqrt(np.clip(rr, 0.3, 2.0)) + 0.06, np.full(len(beats), t_amp), 0.045)
    if af:
        f1, f2 = rng.uniform(5, 7, 2)
        drift = np.cumsum(rng.normal(0, 0.02, n))   # fibrillatory waves wander in phase
        ecg += 0.05 * np.sin(2 * np.pi * f1 * t + drift) + 0.03 * np.sin(2 * np.pi * f2 * t + 0.7 * drift)
    else:
        ecg += _bumps(t, beats - 0.16, np.full(len(beats), 0.12), 0.022)
    ecg += 0.15 * np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * t + rng.uniform(0, 6.3))
    ecg += 0.05 * np.sin(2 * np.pi * 0.05 * t + rng.uniform(0, 6.3))
    ecg += rng.normal(0, 0.02, n)
    if rate > 120:   # mains hum where the sampling rate can carry it
        ecg += 0.01 * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 6.3))

    ptt = rng.uniform(0.18, 0.26)
    # Frank-Starling: a short preceding RR fills the ventricle less, so the pulse is weaker
    amp = ppg_scale * np.clip(rr / np.median(rr), 0.5, 1.3) ** 0.8
    ppg = _bumps(t, beats + ptt + 0.12, amp, 0.06) + _bumps(t, beats + ptt + 0.38, dicrotic * amp, 0.08)
    ppg += 0.2 * np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * t + rng.uniform(0, 6.3))
    ppg += rng.normal(0, 0.02, n)
    return np.clip(ecg, -ECG_RANGE, ECG_RANGE), np.clip(ppg, -PPG_RANGE, PPG_RANGE)


def record_layout(seconds: float, rate: float) -> tuple[float, int]:
    """EDF data-record duration (s) and the number of samples that fill whole records.

    EDF stores an integer number of samples per record: 1 s records for integer rates,
    otherwise the shortest whole-second record that makes ``rate x duration`` an integer.
    """
    frac = Fraction(rate).limit_denominator(60)
    duration = float(frac.denominator)
    records = max(1, int(seconds // duration))
    return duration, int(round(records * duration * rate))


def write_edf(path: str, sample: str, male: bool, ecg: np.ndarray, ppg: np.ndarray, rate: float,
              record_duration: float) -> None:
    """Two channels, ``ECG`` (mV) and ``PPG`` (a.u.), EDF+ with the sample ID as patient code."""
    # imported here: pyedflib loads only when EDF files are written
    import pyedflib

    headers = [
        {"label": "ECG", "dimension": "mV", "sample_frequency": rate, "physical_min": -ECG_RANGE,
         "physical_max": ECG_RANGE, "digital_min": -32768, "digital_max": 32767,
         "transducer": "simulated lead II", "prefilter": ""},
        {"label": "PPG", "dimension": "a.u.", "sample_frequency": rate, "physical_min": -PPG_RANGE,
         "physical_max": PPG_RANGE, "digital_min": -32768, "digital_max": 32767,
         "transducer": "simulated finger PPG", "prefilter": ""},
    ]
    writer = pyedflib.EdfWriter(path, 2, file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        if record_duration != 1.0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                writer.setDatarecordDuration(record_duration)
        writer.setSignalHeaders(headers)
        writer.setPatientCode(sample)
        writer.setSex(1 if male else 0)
        writer.setEquipment("phenoclip_simulate")
        writer.setStartdatetime(START)
        writer.writeSamples([np.ascontiguousarray(ecg), np.ascontiguousarray(ppg)])
    finally:
        writer.close()
