import numpy as np
import pytest

from media.audio import (
    ANALYSIS_RATE,
    FRAME_SAMPLES,
    AnalysisResampler,
    Decimator,
    Interpolator,
    downmix_interleaved,
    rms_dbfs,
)


def tone(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    return np.repeat(x, channels) if channels > 1 else x  # interleaved


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (48000, 1), (8000, 1), (16000, 1)])
def test_a_1khz_tone_stays_1khz(rate: int, channels: int) -> None:
    r = AnalysisResampler()
    pcm = tone(1000, rate, 1.0, channels)
    frames = []
    for i in range(0, len(pcm), rate // 50 * channels):  # fed packet by packet, as decoded
        frames += r.push(pcm[i : i + rate // 50 * channels], rate, channels)
    out = np.concatenate([f.samples for f in frames])
    assert all(len(f.samples) == FRAME_SAMPLES for f in frames)
    # nothing dropped or duplicated; a filter holds back under 100 ms
    assert ANALYSIS_RATE - 1600 <= len(out) <= ANALYSIS_RATE
    assert dominant_frequency(out[1600:], ANALYSIS_RATE) == pytest.approx(1000, abs=5)
    # level preserved: -6 dBFS peak sine is -9 dBFS RMS
    assert rms_dbfs(out[1600:]) == pytest.approx(-9.0, abs=0.5)


def test_no_aliasing_from_48k() -> None:
    """A 12 kHz tone is above the 8 kHz Nyquist limit: a real resampler removes it,
    sample dropping would fold it to 4 kHz, right in the speech band."""
    out = np.concatenate(
        [f.samples for f in AnalysisResampler().push(tone(12000, 48000, 1), 48000)]
    )
    assert rms_dbfs(out[1600:]) < -60


def test_frame_times_follow_sample_count() -> None:
    r = AnalysisResampler()
    frames = r.push(tone(440, 48000, 0.5), 48000) + r.push(tone(440, 48000, 0.5), 48000)
    starts = [f.start for f in frames]
    assert starts == pytest.approx([i * 0.02 for i in range(len(frames))])


@pytest.mark.parametrize("shape", [(1, 1920), (1920,), (1919,)])
def test_stereo_downmix_is_the_mean_of_both_channels(shape: tuple[int, ...]) -> None:
    """The two-channel fast path (aiortc's Opus frames arrive packed, shape (1, 2n)) gives
    what averaging the channels gives; an odd trailing sample is dropped."""
    rng = np.random.default_rng(7)
    pcm = rng.integers(-32768, 32767, shape, dtype=np.int16, endpoint=True)
    flat = pcm.reshape(-1)
    usable = len(flat) - len(flat) % 2
    expected = flat[:usable].astype(np.float64).reshape(-1, 2).mean(axis=1) / 32768.0
    mono = downmix_interleaved(pcm, 2)
    assert mono.dtype == np.float32 and mono.shape == (usable // 2,)
    np.testing.assert_allclose(mono, expected, atol=1e-7)


@pytest.mark.parametrize("factor", [6, 3])  # to 8 kHz (G.711), to 16 kHz (G.722)
def test_what_a_phone_hears_is_band_limited_prompt_and_even(factor: int) -> None:
    """Our audio to a phone: every 20 ms frame gives its 20 ms at once (libsoxr gave
    ~64 ms blocks every third or fourth frame), the speech band passes untouched, what
    would fold back into it is gone, and the delay is a few milliseconds."""
    out_rate = 48000 // factor
    for freq, level in [(300, -9.0), (1000, -9.0), (out_rate * 0.42, -9.0)]:
        decimator = Decimator(factor)
        pcm = tone(int(freq), 48000, 1)
        parts = [decimator.push(pcm[i : i + 960]) for i in range(0, len(pcm), 960)]
        assert {len(p) for p in parts} == {960 // factor}
        out = np.concatenate(parts)
        assert dominant_frequency(out[200:], out_rate) == pytest.approx(freq, abs=5)
        assert rms_dbfs(out[200:]) == pytest.approx(level, abs=0.5)
    for freq in (out_rate // 2 + 600, out_rate, 12000):  # would alias into the band
        decimator = Decimator(factor)
        pcm = tone(freq, 48000, 1)
        out = np.concatenate([decimator.push(pcm[i : i + 960]) for i in range(0, len(pcm), 960)])
        assert rms_dbfs(out[200:]) < -70, freq
    click = np.zeros(4800, np.int16)
    click[2400] = 30000
    decimator = Decimator(factor)
    out = np.concatenate([decimator.push(click[i : i + 960]) for i in range(0, 4800, 960)])
    delay_ms = (int(np.argmax(np.abs(out))) - 2400 // factor) / out_rate * 1000
    assert 0 <= delay_ms <= 5


def test_a_silent_line_is_silence_out() -> None:
    decimator = Decimator(6)
    pcm = tone(1000, 48000, 0.1)
    decimator.push(pcm)
    tail = [decimator.push(np.zeros(960, np.int16)) for _ in range(5)]
    assert all(len(t) == 160 for t in tail) and not np.concatenate(tail[1:]).any()


@pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (8000, 1)])
def test_each_frame_is_analysed_as_it_arrives(rate: int, channels: int) -> None:
    """libsoxr gave the analysis rate in blocks (~64 ms from 48 kHz, 100 ms from 8
    kHz): no frame for a few packets, then several, so end of speech was seen up to
    that late. Now each 20 ms packet from a caller makes its analysis frame at once:
    48 kHz (Opus, and phones through media/rtp.py) and 8 kHz (a G.711 WebRTC peer)."""
    r = AnalysisResampler()
    pcm = tone(1000, rate, 1, channels=channels)
    step = rate // 50 * channels
    counts = [len(r.push(pcm[i : i + step], rate, channels)) for i in range(0, len(pcm), step)]
    assert counts == [1] * 50


@pytest.mark.parametrize("factor", [6, 3])
def test_what_a_phone_says_is_upsampled_at_once_without_images(factor: int) -> None:
    in_rate = 48000 // factor
    for freq in (300, 1000, int(in_rate * 0.42)):
        up = Interpolator(factor)
        pcm = tone(freq, in_rate, 1)
        parts = [up.push(pcm[i : i + in_rate // 50]) for i in range(0, len(pcm), in_rate // 50)]
        assert {len(p) for p in parts} == {960}
        out = np.concatenate(parts)[960:]
        assert dominant_frequency(out, 48000) == pytest.approx(freq, abs=5)
        assert rms_dbfs(out) == pytest.approx(-9.0, abs=0.5)
        spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
        images = spectrum[np.fft.rfftfreq(len(out), 1 / 48000) > in_rate / 2 + 500]
        assert 20 * np.log10(images.max() / spectrum.max()) < -70
