from voms.config import Settings
from voms.serving import TokenBuckets


def test_the_default_rate_limit_lets_a_burst_of_hundreds_of_requests_through() -> None:
    settings = Settings()
    buckets = TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst)
    assert all(buckets.allow(1) for _ in range(1000))


def test_a_client_far_above_its_rate_is_throttled_and_others_are_not() -> None:
    buckets = TokenBuckets(rate=10, burst=5)
    allowed = [buckets.allow(1) for _ in range(50)]
    assert 5 <= sum(allowed) < 10
    assert buckets.allow(2)
