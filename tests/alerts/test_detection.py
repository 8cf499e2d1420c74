from hypothesis import given
from hypothesis import strategies as st

from alerts.detection import ANY_THRESHOLD, charge_may_alert, thresholds_crossed


def test_it_finds_a_crossed_threshold():
    assert thresholds_crossed(limit=1000, before=700, after=850, thresholds=[80, 100]) == (80,)


def test_it_finds_both_thresholds_crossed_by_one_charge():
    assert thresholds_crossed(limit=1000, before=700, after=1000, thresholds=[100, 80]) == (
        80,
        100,
    )


def test_it_counts_landing_exactly_on_a_threshold_once():
    assert thresholds_crossed(limit=500_000, before=0, after=400_000, thresholds=[80]) == (80,)
    assert thresholds_crossed(limit=500_000, before=400_000, after=400_100, thresholds=[80]) == ()


def test_it_finds_nothing_below_or_already_past():
    assert thresholds_crossed(limit=1000, before=100, after=799, thresholds=[80, 100]) == ()
    assert thresholds_crossed(limit=1000, before=1000, after=1200, thresholds=[80, 100]) == ()


def test_it_finds_nothing_without_a_limit_or_a_charge():
    assert thresholds_crossed(limit=0, before=0, after=10, thresholds=[80]) == ()
    assert thresholds_crossed(limit=1000, before=900, after=900, thresholds=[80, 100]) == ()


def test_it_finds_nothing_when_alerts_are_off():
    assert thresholds_crossed(limit=1000, before=0, after=1000, thresholds=[]) == ()


@given(
    limit=st.integers(min_value=0, max_value=10_000_000),
    before=st.integers(min_value=0, max_value=12_000_000),
    charge=st.integers(min_value=0, max_value=2_000_000),
)
def test_the_gateway_filter_lets_through_exactly_the_charges_that_cross_a_percentage(
    limit, before, charge
):
    after = before + charge
    crossed = thresholds_crossed(limit=limit, before=before, after=after, thresholds=ANY_THRESHOLD)
    assert charge_may_alert(limit=limit, before=before, after=after) == bool(crossed)
