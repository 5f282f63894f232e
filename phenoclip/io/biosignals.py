"""Biosignal recordings in: EDF/EDF+ and BDF/BDF+ (pyedflib), CSV/TSV tables (numpy). No torch.

Data contract of :func:`read_recording`: a :class:`Recording` with one float64 array per
channel in physical units (EDF's digital -> physical scaling applied), the channel labels
(stripped of padding), and each channel's sampling rate in Hz. EDF channels may have different
rates; they are returned as they are and the caller resamples each channel once, straight to
its target rate (no intermediate common rate, so no second interpolation). EDF+ annotation
channels are not signals and are left out.

CSV/TSV (optionally gzipped): a header line naming the columns, one row per sample time, the
columns are channels. A first column named ``time`` (seconds; ``time_s`` also accepted) is
optional. The rate comes from ``rate`` (the manifest's column) or from the time column; with
both they must agree within 0.5 %. Every value must be a finite number.

Every refusal is one line naming the file: :class:`~phenoclip.errors.MalformedInputError`
(exit 4) for unreadable content, :class:`~phenoclip.errors.InconsistentInputError` (exit 5)
when the manifest's rate disagrees with the file.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from phenoclip.errors import InconsistentInputError, MalformedInputError, require_readable
from phenoclip.io.tables import open_text

EDF_SUFFIXES = (".edf", ".bdf", ".rec")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
_TIME_COLUMNS = ("time", "time_s")
_RATE_RTOL = 0.005


@dataclass
class Recording:
    """One recording: ``data[c]`` is channel ``channels[c]`` sampled at ``rates[c]`` Hz."""

    path: str
    channels: list[str]
    rates: list[float]
    data: list[np.ndarray]
    units: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Seconds covered by the longest channel."""
        return max(len(x) / r for x, r in zip(self.data, self.rates))


def _check_channels(channels: list[str], path: str) -> None:
    seen = set()
    for name in channels:
        if not name:
            raise MalformedInputError("a channel has an empty label", path)
        if name in seen:
            raise MalformedInputError(f"channel label '{name}' appears twice", path)
        seen.add(name)


def _edf_precheck(path: str) -> None:
    """Check the fixed EDF/BDF header and the file size ourselves.

    pyedflib's C layer prints its own complaint to stdout (which must stay clean for pipes)
    before raising, and its message does not say what is wrong.
    """
    with open(path, "rb") as fh:
        head = fh.read(256)
        if len(head) < 256 or not (head[:8] == b"0       " or head[:8] == b"\xffBIOSEMI"):
            raise MalformedInputError("not an EDF or BDF file (bad version field in the header)", path)
        try:
            header_bytes, records, ns = int(head[184:192]), int(head[236:244]), int(head[252:256])
            fh.seek(256 + ns * 216)
            per_record = [int(fh.read(8)) for _ in range(ns)]
        except ValueError:
            raise MalformedInputError("corrupt EDF/BDF header (a number field is not a number)", path) from None
    width = 3 if head[:8] == b"\xffBIOSEMI" else 2
    expected = header_bytes + records * sum(per_record) * width
    actual = os.path.getsize(path)
    if records > 0 and actual < expected:
        raise MalformedInputError(f"truncated EDF/BDF: {actual} bytes, the header promises {expected}", path,
                                  "re-export or re-download the recording")


def read_edf(path: str | os.PathLike) -> Recording:
    """Read every signal channel of an EDF/EDF+/BDF/BDF+ file (physical units)."""
    import pyedflib  # imported here: only EDF users pay for it

    p = require_readable(path)
    _edf_precheck(p)
    try:
        reader = pyedflib.EdfReader(p)
    except OSError as e:
        raise MalformedInputError(f"cannot read EDF/BDF ({str(e).split(': ', 1)[-1]})", p) from None
    try:
        n = reader.signals_in_file
        channels = [reader.getLabel(i).strip() for i in range(n)]
        rates = [float(r) for r in reader.getSampleFrequencies()]
        units = [reader.getPhysicalDimension(i).strip() for i in range(n)]
        data = [np.asarray(reader.readSignal(i), dtype=np.float64) for i in range(n)]
    finally:
        reader.close()
    if n == 0:
        raise MalformedInputError("no signal channels (only annotations?)", p)
    _check_channels(channels, p)
    if any(r <= 0 for r in rates) or any(len(x) == 0 for x in data):
        raise MalformedInputError("a channel has no samples or a zero sampling rate", p)
    return Recording(p, channels, rates, data, units)


def _rate_from_time(t: np.ndarray, path: str) -> float:
    if len(t) < 2 or np.any(np.diff(t) <= 0):
        raise MalformedInputError("the time column must increase strictly", path)
    rate = (len(t) - 1) / (t[-1] - t[0])
    # tolerate timestamps rounded to the ms, refuse gaps: every time within half a period of the grid
    drift = np.abs(t - t[0] - np.arange(len(t)) / rate).max()
    if drift > 0.5 / rate:
        raise MalformedInputError(f"irregular sampling: the time column strays {drift:.3g} s from a uniform "
                                  f"{rate:.6g} Hz grid", path, "resample it first")
    # timestamps written with limited precision give 249.9999 for 250: keep the round rate
    return float(round(rate)) if abs(rate - round(rate)) < 1e-3 * rate else float(rate)


def read_table_recording(path: str | os.PathLike, rate: float | None = None) -> Recording:
    """Read a CSV/TSV recording (see the module docstring); ``rate`` in Hz from the manifest."""
    p = require_readable(path)
    with open_text(p) as fh:
        try:
            first = fh.readline()
        except (EOFError, OSError, UnicodeDecodeError, zlib.error) as e:
            raise MalformedInputError(f"unreadable table ({e})", p) from None
        name = p[:-3] if p.endswith(".gz") else p
        delim = "," if name.endswith(".csv") else "\t" if name.endswith(".tsv") else (
            "\t" if first.count("\t") >= first.count(",") else ",")
        header = [h.strip() for h in first.rstrip("\r\n").split(delim)]
        try:
            values = np.loadtxt(fh, delimiter=delim, dtype=np.float64, ndmin=2, comments="#")
        except (ValueError, EOFError, OSError, zlib.error) as e:
            raise MalformedInputError(f"not a numeric table ({' '.join(str(e).split())[:150]})", p) from None
    if not header or header == [""]:
        raise MalformedInputError("empty table (no header line)", p)
    if values.shape[0] == 0:
        raise MalformedInputError("no data rows", p)
    if values.shape[1] != len(header):
        raise MalformedInputError(f"rows have {values.shape[1]} values, the header names {len(header)} columns", p)
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        raise MalformedInputError(f"non-finite value (NaN/inf) at data row {bad[0] + 1}, column "
                                  f"'{header[bad[1]]}'", p, "fill or cut the gap first")
    if header[0].lower() in _TIME_COLUMNS:
        from_time = _rate_from_time(values[:, 0], p)
        if rate is not None and abs(from_time - rate) > _RATE_RTOL * rate:
            raise InconsistentInputError(f"the time column gives {from_time:g} Hz, the manifest says {rate:g} Hz", p)
        rate = rate if rate is not None else from_time
        header, values = header[1:], values[:, 1:]
    if rate is None:
        raise MalformedInputError("no sampling rate: neither a 'time' column nor a 'rate' in the manifest", p,
                                  "add a rate column (Hz) to the manifest")
    if not header:
        raise MalformedInputError("no channel columns besides time", p)
    _check_channels(header, p)
    data = [np.ascontiguousarray(values[:, c]) for c in range(values.shape[1])]
    return Recording(p, header, [float(rate)] * len(header), data, [""] * len(header))


def read_recording(path: str | os.PathLike, rate: float | None = None) -> Recording:
    """Read a recording by its kind: EDF/BDF by suffix or header bytes, else a CSV/TSV table.

    ``rate`` (Hz, from the manifest) is required for tables without a time column; for EDF/BDF
    the header's rates rule and a ``rate`` that differs from any channel's is refused.
    """
    p = require_readable(path)
    with open(p, "rb") as fh:
        magic = fh.read(8)
    if p.lower().endswith(EDF_SUFFIXES) or magic in (b"0       ", b"\xffBIOSEMI"):
        rec = read_edf(p)
        if rate is not None and any(abs(r - rate) > _RATE_RTOL * rate for r in rec.rates):
            raise InconsistentInputError(f"the manifest says {rate:g} Hz, the file's channels are sampled at "
                                         f"{', '.join(f'{r:g}' for r in sorted(set(rec.rates)))} Hz", p,
                                         "leave the rate empty for EDF/BDF")
        return rec
    return read_table_recording(p, rate)
