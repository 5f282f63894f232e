"""preprocess signals: frequencies survive resampling, the band-pass attenuates, tables, bad input, CLI."""

import gzip
import os

import numpy as np
import pytest
from pyedflib import highlevel

from conftest import error_lines, run_cli
from phenoclip.errors import (EXIT_INCONSISTENT, EXIT_INPUT_MISSING, EXIT_USAGE,
                              InconsistentInputError, InputMissingError, MalformedInputError, UsageError)
from phenoclip.io.biosignals import read_recording
from phenoclip.preprocess.signals import convert_signals
from phenoclip.store_read import open_store


def tone(freq, rate, seconds, amp=1.0, phase=0.0):
    t = np.arange(int(round(rate * seconds))) / rate
    return amp * np.sin(2 * np.pi * freq * t + phase)


def write_edf(path, channels: dict, rates: dict):
    """channels: label -> samples (physical units); rates: label -> Hz."""
    headers = highlevel.make_signal_headers(list(channels), dimension="mV")
    for h, (label, x) in zip(headers, channels.items()):
        span = float(np.ceil(max(abs(x.min()), abs(x.max())) * 105) / 100)  # EDF keeps 8 characters
        h.update(sample_frequency=rates[label], physical_min=-span, physical_max=span)
    highlevel.write_edf(str(path), list(channels.values()), headers)
    return path


def ecg_ppg(path, seconds=30.0, noise_hz=35.0):
    """'ECG' at 256 Hz: 7 Hz tone + a 35 Hz tone (out of band for 0.5-20 Hz) + 0.05 Hz drift;
    'PPG' at 128 Hz: 1.2 Hz tone."""
    ecg = tone(7, 256, seconds) + tone(noise_hz, 256, seconds, 0.5) + tone(0.05, 256, seconds, 2.0)
    return write_edf(path, {"ECG": ecg, "PPG": tone(1.2, 128, seconds, 3.0)}, {"ECG": 256, "PPG": 128})


def amplitude(x, rate, freq):
    """Sine amplitude at ``freq`` from a Hann-windowed FFT (robust to the bin not being exact)."""
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft((x - x.mean()) * w)) * 2 / w.sum()
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return spec[np.abs(f - freq) < 0.3].max()


def peak(x, rate):
    spec = np.abs(np.fft.rfft(x - x.mean()))
    return np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)]


def manifest(tmp_path, rows, header=("sample", "path")):
    p = tmp_path / "signals.tsv"
    p.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return p


def leftovers(tmp_path):
    return sorted(n for n in os.listdir(tmp_path) if n.endswith(".h5") or ".tmp-" in n)


def test_edf_reader_keeps_labels_rates_and_values(tmp_path):
    rec = read_recording(ecg_ppg(tmp_path / "a.edf"))
    assert rec.channels == ["ECG", "PPG"] and rec.rates == [256.0, 128.0] and rec.units == ["mV", "mV"]
    np.testing.assert_allclose(rec.data[1], tone(1.2, 128, 30, 3.0), atol=3 * 3.15 / 32767)


def test_resampling_keeps_frequency_and_bandpass_attenuates(tmp_path):
    ecg_ppg(tmp_path / "a.edf")
    m = manifest(tmp_path, [("a", "a.edf")])
    raw, filt = tmp_path / "raw.h5", tmp_path / "filt.h5"
    convert_signals(m, raw, rate=100, window=20, bandpass=None)
    summary = convert_signals(m, filt, rate=100, window=20, bandpass=(0.5, 20))
    assert summary == {"samples": 1, "channels": 2, "padded": 0, "flat_channels": 0}
    with open_store(raw, "signals") as st:
        x = st.read("signals", 0)
        assert x.shape == (1 * 2, 2000) and x.dtype == np.float32
        assert st.strings("channels") == ["ECG", "PPG"]
        assert st.attrs["sampling_rate"] == 100 and st.attrs["window_seconds"] == 20
        np.testing.assert_array_equal(st.read("source_rate", 0), [256, 128])
    with open_store(filt) as st:
        y = st.read("signals", 0)
        np.testing.assert_allclose(st.attrs["bandpass"], [0.5, 20])
        assert st.read("valid_length", 0) == 2000
    # dominant frequencies survive 256 -> 100 Hz and 128 -> 100 Hz (FFT resolution 0.05 Hz)
    assert peak(y[0], 100) == pytest.approx(7.0, abs=0.05)
    assert peak(x[1], 100) == pytest.approx(1.2, abs=0.05)
    assert peak(y[1], 100) == pytest.approx(1.2, abs=0.05)
    # the 35 Hz tone relative to the 7 Hz one: as written without the filter, < -30 dB with it
    before = amplitude(x[0], 100, 35) / amplitude(x[0], 100, 7)
    after = amplitude(y[0], 100, 35) / amplitude(y[0], 100, 7)
    assert before == pytest.approx(0.5, rel=0.05)
    assert 20 * np.log10(after / before) < -30
    # the 0.05 Hz drift (4x the 7 Hz tone's amplitude in the raw window) is gone too
    assert amplitude(y[0], 100, 0.05) < 0.05 * amplitude(y[0], 100, 7)
    # robust standardisation: median 0, MAD-sd 1 per channel
    for ch in y:
        assert np.median(ch) == pytest.approx(0, abs=1e-3)
        assert 1.4826 * np.median(np.abs(ch - np.median(ch))) == pytest.approx(1, rel=1e-3)


def test_csv_recordings_rate_from_time_column_or_manifest(tmp_path):
    rate = 250
    t = np.arange(rate * 12) / rate
    a, b = tone(5, rate, 12), tone(11, rate, 12, 0.3)
    # timestamps rounded to the ms, as loggers write them
    lines = ["time,lead_a,lead_b"] + [f"{ti:.3f},{x:.6f},{y:.6f}" for ti, x, y in zip(t, a, b)]
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    with gzip.open(tmp_path / "b.tsv.gz", "wt") as fh:
        fh.write("lead_a\tlead_b\n" + "".join(f"{x:.6f}\t{y:.6f}\n" for x, y in zip(b, a)))
    m = manifest(tmp_path, [("a", "a.csv", ""), ("b", "b.tsv.gz", "250")], ("sample", "path", "rate"))
    out = tmp_path / "sig.h5"
    convert_signals(m, out, rate=100, window=10, bandpass=(0.5, 40))
    with open_store(out) as st:
        assert st.strings("channels") == ["lead_a", "lead_b"]
        x = st["signals"][...]
        np.testing.assert_array_equal(st["source_rate"][...], [[250, 250], [250, 250]])
    assert x.shape == (2, 2, 1000)
    assert [peak(x[0, 0], 100), peak(x[0, 1], 100)] == pytest.approx([5, 11], abs=0.1)
    assert [peak(x[1, 0], 100), peak(x[1, 1], 100)] == pytest.approx([11, 5], abs=0.1)


def test_short_recording_is_padded_with_valid_length(tmp_path):
    write_edf(tmp_path / "long.edf", {"ECG": tone(3, 200, 12)}, {"ECG": 200})
    write_edf(tmp_path / "short.edf", {"ECG": tone(3, 200, 4)}, {"ECG": 200})
    out = tmp_path / "sig.h5"
    summary = convert_signals(manifest(tmp_path, [("l", "long.edf"), ("s", "short.edf")]), out, rate=50,
                              window=10, bandpass=None)
    assert summary["padded"] == 1
    with open_store(out) as st:
        np.testing.assert_array_equal(st["valid_length"][...], [500, 200])
        short = st.read("signals", 1)[0]
    assert np.all(short[200:] == 0)
    # the real part is standardised on its own, not diluted by the padding
    assert 1.4826 * np.median(np.abs(short[:200])) == pytest.approx(1, rel=1e-2)


def test_channel_mismatch_names_the_sample(tmp_path):
    ecg_ppg(tmp_path / "a.edf")
    write_edf(tmp_path / "b.edf", {"PPG": tone(1, 128, 30), "ECG": tone(7, 256, 30)}, {"ECG": 256, "PPG": 128})
    with pytest.raises(InconsistentInputError) as err:
        convert_signals(manifest(tmp_path, [("a", "a.edf"), ("b", "b.edf")]), tmp_path / "sig.h5")
    line = err.value.line()
    assert err.value.exit_code == EXIT_INCONSISTENT and "sample 'b' has channels PPG,ECG" in line
    assert "b.edf" in line and "\n" not in line
    assert leftovers(tmp_path) == []


def _truncated_edf(p):
    ecg_ppg(p / "bad.edf")
    raw = (p / "bad.edf").read_bytes()
    (p / "bad.edf").write_bytes(raw[: len(raw) // 2])
    return "bad.edf", ""


def _table(name, text, rate=""):
    def make(p):
        (p / name).write_text(text)
        return name, rate
    return make


BAD = {
    "truncated-edf": (_truncated_edf, MalformedInputError, "truncated EDF/BDF"),
    "not-edf": (_table("bad.edf", "this is not an EDF file at all" * 20), MalformedInputError, "not an EDF"),
    "csv-no-rate": (_table("bad.csv", "a,b\n1,2\n3,4\n"), MalformedInputError, "no sampling rate"),
    "csv-nan": (_table("bad.csv", "a,b\n1,2\nnan,4\n", "100"), MalformedInputError, "row 2, column 'a'"),
    "csv-text": (_table("bad.csv", "a,b\n1,2\nx,4\n", "100"), MalformedInputError, "not a numeric table"),
    "csv-irregular": (_table("bad.csv", "time,a\n0,1\n0.01,2\n0.02,3\n0.1,4\n"), MalformedInputError,
                      "irregular sampling"),
    "csv-rate-disagrees": (_table("bad.csv", "time,a\n0,1\n0.01,2\n0.02,3\n0.03,4\n", "250"),
                           InconsistentInputError, "time column gives 100 Hz"),
    "bad-rate-cell": (_table("bad.csv", "a\n1\n2\n", "fast"), MalformedInputError, "rate 'fast'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recording_is_refused_and_leaves_nothing(tmp_path, case):
    make, cls, words = BAD[case]
    name, rate = make(tmp_path)
    m = manifest(tmp_path, [("bad", name, rate)], ("sample", "path", "rate"))
    with pytest.raises(cls) as err:
        convert_signals(m, tmp_path / "sig.h5", rate=50, window=1, bandpass=None)
    assert err.value.exit_code == cls.exit_code
    line = err.value.line()
    assert words in line and "\n" not in line
    assert leftovers(tmp_path) == []


def test_band_above_nyquist_and_absent_file(tmp_path):
    ecg_ppg(tmp_path / "a.edf")
    m = manifest(tmp_path, [("a", "a.edf")])
    with pytest.raises(UsageError) as err:
        convert_signals(m, tmp_path / "sig.h5", rate=100, window=10, bandpass=(0.5, 50))
    assert err.value.exit_code == EXIT_USAGE and "Nyquist frequency 50 Hz" in err.value.line()
    with pytest.raises(InputMissingError) as err:
        convert_signals(manifest(tmp_path, [("a", "a.edf"), ("b", "gone.edf")]), tmp_path / "sig.h5")
    assert err.value.exit_code == EXIT_INPUT_MISSING and "gone.edf" in err.value.line()
    assert leftovers(tmp_path) == []


def test_cli_signals_store_log_and_one_line_error(tmp_path):
    ecg_ppg(tmp_path / "a.edf")
    ecg_ppg(tmp_path / "b.edf", seconds=12)
    proc = run_cli("preprocess", "signals", "--manifest", manifest(tmp_path, [("a", "a.edf"), ("b", "b.edf")]),
                   "--out", tmp_path / "sig.h5", "--rate", "100", "--window", "10", "--bandpass", "0.5,40")
    assert proc.returncode == 0, proc.stderr
    assert "samples=2" in (tmp_path / "sig.log").read_text()
    with open_store(tmp_path / "sig.h5", "signals") as st:
        assert st["signals"].shape == (2, 2, 1000)
    os.remove(tmp_path / "sig.h5")
    os.remove(tmp_path / "sig.log")
    write_edf(tmp_path / "c.edf", {"ECG": tone(7, 256, 30)}, {"ECG": 256})
    proc = run_cli("-q", "preprocess", "signals", "--manifest", manifest(tmp_path, [("a", "a.edf"), ("c", "c.edf")]),
                   "--out", tmp_path / "sig.h5")
    assert proc.returncode == EXIT_INCONSISTENT
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("phenoclip: error:") and "sample 'c'" in lines[0]
    assert leftovers(tmp_path) == [] and not (tmp_path / "sig.log").exists()


def test_impossible_rates_and_windows_get_one_line(tmp_path):
    """Each was a crash or a click usage block: a rate of 0.0001 Hz in the manifest
    (ZeroDivisionError), a window that cannot fit in memory (MemoryError), --rate 0."""
    rate = 250
    (tmp_path / "a.tsv").write_text("lead\n" + "".join(f"{x:.5f}\n" for x in tone(5, rate, 12)))
    slow, ok = tmp_path / "slow.tsv", tmp_path / "ok.tsv"
    slow.write_text("sample\tpath\trate\na\ta.tsv\t0.0001\n")
    ok.write_text(f"sample\tpath\trate\na\ta.tsv\t{rate}\n")
    cases = [((slow,), 4, "is a factor of 1e+06"),
             ((ok, "--window", "1e8", "--rate", "1e9"), 2, "of memory, more than the"),
             ((ok, "--rate", "0"), 2, "'--rate'"),
             ((ok, "--rate", "1e6", "--window", "0.1", "--bandpass", "none"), 4, "is a factor of 4e+03")]
    for (m, *options), code, text in cases:
        proc = run_cli("preprocess", "signals", "--manifest", m, "--out", tmp_path / "sig.h5", *options)
        assert proc.returncode == code, (options, proc.stderr)
        [line] = error_lines(proc)
        assert line.startswith("phenoclip: error:") and text in line, line
        assert leftovers(tmp_path) == []
