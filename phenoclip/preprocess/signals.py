"""Biosignal recordings -> ``signals`` store: resampled, band-passed, standardised, one window.

Per recording, per channel, in this order:

1. resample straight from the channel's own rate to ``rate`` (``scipy.signal.resample_poly``,
   whose Kaiser-windowed FIR is the anti-aliasing filter); EDF channels of different rates are
   each resampled once, so a mixed-rate file needs no intermediate common rate;
2. zero-phase Butterworth band-pass (order 4, run forwards and backwards by ``sosfiltfilt``,
   so no phase shift and an effective order 8) over the *whole* recording, so the kept window
   has no filter edge transients; ``lo == 0`` makes it a low-pass;
3. keep the first ``window`` seconds (``T = round(window * rate)`` samples);
4. robust standardisation over the kept samples: ``(x - median) / (1.4826 * MAD)`` (the std
   when MAD is 0; a channel with no spread at all is set to 0 and counted as flat). It makes
   channels in mV and in uV comparable and is not thrown by a few spikes.

A recording shorter than the window is kept, zero-padded at the end (zero is the channel median
after step 4), and ``valid_length`` says how many samples are real; dropping the patient would
lose their other modalities' pairing, and the loader can mask the padding.

Store layout (schema ``signals`` v1), N samples, C channels, T = round(window * rate)::

    samples        str (N,)
    signals        float32 (N, C, T)
    channels       str (C,)               same names, same order, in every recording
    valid_length   int64 (N,)             samples of real signal; the rest is zero padding
    source_rate    float64 (N, C)         each channel's original rate in Hz
    root attrs: sampling_rate (Hz), window_seconds, bandpass ([lo, hi] Hz, or the string
                'none'), filter, resampling, standardisation, padding, axes
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
from scipy import signal as sps

from phenoclip.errors import InconsistentInputError, MalformedInputError, UsageError
from phenoclip.memory import require_memory
from phenoclip.io.biosignals import Recording, read_recording
from phenoclip.io.tables import read_manifest
from phenoclip.progress import track, warn
from phenoclip.store_write import create_store

FILTER_ORDER = 4
MAD_TO_SD = 1.4826  # MAD of a normal distribution times this is its standard deviation


def design_bandpass(lo: float, hi: float, rate: float, order: int = FILTER_ORDER) -> np.ndarray:
    """Butterworth band-pass (a low-pass when ``lo == 0``) as second-order sections."""
    nyquist = rate / 2.0
    if not 0 <= lo < hi:
        raise UsageError(f"band-pass needs 0 <= LO < HI, got {lo:g},{hi:g} Hz")
    if hi >= nyquist:
        raise UsageError(f"band-pass upper edge {hi:g} Hz is not below the Nyquist frequency {nyquist:g} Hz "
                         f"of the {rate:g} Hz target rate", hint="lower HI or raise --rate")
    if lo == 0:
        return sps.butter(order, hi, btype="lowpass", fs=rate, output="sos")
    return sps.butter(order, [lo, hi], btype="bandpass", fs=rate, output="sos")


#: resampling factors beyond this (either way) are refused: a rate that far from the target is
#: a unit mistake (kHz for Hz, a period for a rate), and polyphase filters grow with the factor
MAX_RESAMPLE_FACTOR = 1000


def check_resample(rate_in: float, rate_out: float, path: str) -> None:
    """Refuse a recording whose rate is more than :data:`MAX_RESAMPLE_FACTOR` from the target."""
    factor = rate_out / rate_in
    if not (1 / MAX_RESAMPLE_FACTOR <= factor <= MAX_RESAMPLE_FACTOR):
        raise MalformedInputError(f"resampling from {rate_in:g} Hz to {rate_out:g} Hz is a factor of {factor:.3g}, "
                                  f"beyond 1/{MAX_RESAMPLE_FACTOR}..{MAX_RESAMPLE_FACTOR}", path,
                                  "check the recording's rate (Hz, not kHz or seconds) or choose --rate")


def resample(x: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    """Polyphase resampling by the rational ratio nearest ``rate_out / rate_in`` (within
    :data:`MAX_RESAMPLE_FACTOR`, see :func:`check_resample`)."""
    if rate_in == rate_out:
        return x
    ratio = Fraction(rate_out / rate_in).limit_denominator(MAX_RESAMPLE_FACTOR)
    return sps.resample_poly(x, ratio.numerator, ratio.denominator)


def robust_standardise(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(x - median) / (1.4826 * MAD)``; returns ``(y, flat)``, flat when x has no spread."""
    centre = np.median(x)
    scale = MAD_TO_SD * np.median(np.abs(x - centre))
    if scale <= 0:
        scale = x.std()
    if scale <= 0 or not np.isfinite(scale):
        return np.zeros_like(x), True
    return (x - centre) / scale, False


def process_recording(rec: Recording, *, rate: float, samples: int, sos: np.ndarray | None
                      ) -> tuple[np.ndarray, int, int]:
    """Steps 1-4 of the module docstring. Returns ``(C x samples float32, valid_length, flat)``."""
    channels = [resample(x, r, rate) for x, r in zip(rec.data, rec.rates)]
    length = min(len(x) for x in channels)  # mixed-rate channels can round to +-1 sample
    out = np.zeros((len(channels), samples), dtype=np.float32)
    valid = min(length, samples)
    flat = 0
    for c, x in enumerate(channels):
        x = x[:length]
        if sos is not None and length > 1:
            # scipy's default padding needs ~27 samples; shorter recordings get what they have
            pad = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
            x = sps.sosfiltfilt(sos, x, padlen=min(pad, length - 1))
        y, is_flat = robust_standardise(x[:valid])
        flat += is_flat
        out[c, :valid] = y
    return out, valid, flat


def _manifest_rate(entry, manifest: str, row: int) -> float | None:
    text = entry.fields.get("rate", "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise MalformedInputError(f"row {row} ({entry.sample}): rate '{text}' is not a positive number in Hz",
                                  manifest)
    return value


def _names(channels: list[str]) -> str:
    text = ",".join(channels)
    return text if len(text) <= 80 else text[:77] + "..."


def convert_signals(manifest: str | os.PathLike, out: str | os.PathLike, *, rate: float = 100.0,
                    window: float = 10.0, bandpass: tuple[float, float] | None = (0.5, 40.0)) -> dict:
    """Read the recordings a manifest lists and write a ``signals`` store.

    Parameters
    ----------
    manifest:
        TSV with ``sample`` and ``path`` (EDF/BDF or CSV/TSV, relative to the manifest) and an
        optional ``rate`` column (Hz) for tables without a time column.
    out:
        The store (.h5), written atomically: on any error nothing is left at ``out``.
    rate:
        Target sampling rate in Hz.
    window:
        Seconds kept from the start of each recording.
    bandpass:
        ``(lo, hi)`` in Hz, or None for no filter; ``hi`` must be below ``rate / 2``.

    Returns counts: ``samples``, ``channels``, ``padded`` (recordings shorter than the window),
    ``flat_channels``.
    """
    if not (np.isfinite(rate) and rate > 0):
        raise UsageError(f"rate must be a positive number of Hz, got {rate}")
    if not (np.isfinite(window) and window > 0):
        raise UsageError(f"window must be a positive number of seconds, got {window}")
    samples = int(round(window * rate))
    if samples < 1:
        raise UsageError(f"window of {window} s holds no sample at {rate:g} Hz")
    # one channel of one recording, with the float64 working copies of resampling and filtering
    require_memory(samples * 8 * 4, f"--window {window:g} s at --rate {rate:g} Hz ({samples:,} samples per "
                   "channel)", from_option=True, hint="choose a shorter --window or a lower --rate")
    sos = design_bandpass(bandpass[0], bandpass[1], rate) if bandpass is not None else None
    manifest = os.fspath(manifest)
    entries = read_manifest(manifest, ["path"])
    rates = [_manifest_rate(e, manifest, row) for row, e in enumerate(entries, start=2)]
    n = len(entries)
    attrs = {"sampling_rate": float(rate), "window_seconds": float(window),
             "bandpass": np.asarray(bandpass, dtype=np.float64) if bandpass is not None else "none",
             "filter": f"butterworth order {FILTER_ORDER}, zero-phase (sosfiltfilt), whole recording"
                       if bandpass is not None else "none",
             "resampling": "scipy.signal.resample_poly per channel, from its own rate",
             "standardisation": "per channel over the valid samples: (x - median) / (1.4826 * MAD)",
             "padding": "zeros after valid_length", "axes": "sample,channel,time"}
    channels: list[str] | None = None
    first = ""
    padded = flat = 0
    valid = np.zeros(n, dtype=np.int64)
    with create_store(out, "signals", [e.sample for e in entries], attrs=attrs, source=manifest) as w:
        data = source_rate = None
        for i, entry in enumerate(track(entries, "preprocess signals", unit="recordings")):
            rec = read_recording(entry.paths["path"], rates[i])
            for r in set(rec.rates):
                check_resample(float(r), rate, rec.path)
            if channels is None:
                require_memory(samples * 8 * 4 * len(rec.channels), f"{len(rec.channels)} channel(s) of "
                               f"{samples:,} samples", rec.path, from_option=True,
                               hint="choose a shorter --window or a lower --rate")
                channels, first = rec.channels, entry.sample
                data = w.per_sample("signals", shape=(n, len(channels), samples), dtype=np.float32)
                source_rate = np.zeros((n, len(channels)))
            elif rec.channels != channels:
                raise InconsistentInputError(
                    f"sample '{entry.sample}' has channels {_names(rec.channels)}, sample '{first}' has "
                    f"{_names(channels)}", rec.path, "every recording needs the same channels in the same order")
            data[i], valid[i], n_flat = process_recording(rec, rate=rate, samples=samples, sos=sos)
            source_rate[i] = rec.rates
            if valid[i] < samples:
                padded += 1
            if n_flat:
                flat += n_flat
                warn(f"{rec.path}: {n_flat} flat channel(s) (no variation in the window), stored as zeros")
        w.array("channels", list(channels))
        w.per_sample("valid_length", valid)
        w.per_sample("source_rate", source_rate)
    if padded:
        warn(f"{padded} recording(s) shorter than {window:g} s were zero-padded (see valid_length)")
    return {"samples": n, "channels": len(channels), "padded": padded, "flat_channels": flat}
