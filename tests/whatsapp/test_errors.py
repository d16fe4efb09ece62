import random

import pytest

from connectors.whatsapp.errors import MAX_ATTEMPTS, classify


@pytest.mark.parametrize("code, status", [(130429, 400), (131056, 400), (4, 400), (80007, 400), (131000, 500),
                                          (None, 503), (None, 429)])
def test_rate_limits_and_outages_are_retried_whatever_the_http_status(code, status):
    verdict = classify(code, status, attempt=1, rng=random.Random(1))
    assert verdict.retry and verdict.delay_seconds > 0


@pytest.mark.parametrize("code, status", [(131047, 400), (131026, 400), (100, 400), (190, 401), (131048, 400),
                                          (None, 400), (132001, 404)])
def test_errors_that_a_retry_cannot_fix_are_not_retried(code, status):
    verdict = classify(code, status, attempt=1)
    assert not verdict.retry and verdict.meaning


def test_back_off_grows_with_jitter_and_stops():
    rng = random.Random(7)
    delays = [classify(130429, 400, attempt, rng).delay_seconds for attempt in range(1, MAX_ATTEMPTS)]
    assert all(later > earlier for earlier, later in zip(delays, delays[1:]))
    assert classify(131056, 400, 1, random.Random(3)).delay_seconds >= 4.8
    assert not classify(130429, 400, MAX_ATTEMPTS).retry
    assert "24 hours" in classify(131047, 400, 1).meaning
