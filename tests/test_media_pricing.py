"""Media endpoints priced in their own units (broker/money/pricing.py): per image, per audio minute, per character."""

from __future__ import annotations

import pytest

from broker.money import pricing


def test_media_prices_follow_the_tables_and_a_free_deployment_stays_free() -> None:
    usd = pricing.usd
    priced = pricing.Price(1.0, 1.0, 1.0)  # any deployment that is not free
    assert usd(pricing.image_nanos(priced, "dall-e-3", images=1, quality="hd", size="1792x1024") or 0) == 0.12
    assert usd(pricing.image_nanos(priced, "dall-e-2", images=3, quality=None, size="512x512") or 0) == \
        pytest.approx(0.054)
    assert usd(pricing.image_nanos(priced, "gpt-image-1-2025-04-23", images=2, quality="medium",
                                   size="1536x1024") or 0) == pytest.approx(0.126)
    assert pricing.image_nanos(priced, "flux-schnell", images=1, quality=None, size=None) is None  # unpriced
    assert pricing.image_nanos(pricing.FREE, "dall-e-3", images=1, quality=None, size=None) == 0
    assert usd(pricing.transcription_nanos(priced, "whisper-1", seconds=90, tokens=None) or 0) == pytest.approx(0.009)
    assert usd(pricing.transcription_nanos(priced, "gpt-4o-mini-transcribe", seconds=None,
                                           tokens=(1000, 100)) or 0) == pytest.approx((1000 * 3 + 100 * 5) / 1e6)
    assert usd(pricing.speech_nanos(priced, "tts-1-hd", characters=1000) or 0) == pytest.approx(0.03)
    assert usd(pricing.speech_nanos(priced, "gpt-4o-mini-tts", characters=400) or 0) == pytest.approx(100 * 0.6 / 1e6)
