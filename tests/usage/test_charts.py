import datetime as dt

from usage import charts
from usage.selectors import DayTotals


def _days(values):
    start = dt.date(2026, 3, 1)
    return [
        DayTotals(day=start + dt.timedelta(days=i), input_tokens=a, output_tokens=b, requests=1)
        for i, (a, b) in enumerate(values)
    ]


def test_it_picks_round_axis_maxima():
    assert [charts._nice_max(v) for v in (0, 1, 7, 12, 180, 2_400, 500_001)] == [
        1, 1, 10, 20, 200, 2_500, 1_000_000,
    ]  # fmt: skip


def test_it_stacks_output_on_input_with_heights_in_proportion():
    chart = charts.stacked_bars(
        _days([(100, 100), (50, 0), (0, 0)]),
        [("input_tokens", "bar-input"), ("output_tokens", "bar-output")],
        lambda row: str(row.day),
    )
    full, half, empty = chart.bars
    assert [s.css_class for s in full.segments] == ["bar-input", "bar-output"]
    # The top of the axis is 200: a 200-token day fills the plot, 50 tokens a quarter of it.
    plot_height = chart.baseline - charts.PAD_TOP
    assert round(full.segments[0].height + full.segments[1].height, 1) == round(plot_height, 1)
    assert round(half.segments[0].height, 1) == round(plot_height / 4, 1)
    assert full.segments[1].y < full.segments[0].y  # output sits on top of input
    assert empty.segments == ()
    assert [t.label for t in chart.ticks] == ["0", "50", "100", "150", "200"]


def test_it_writes_escaped_svg():
    chart = charts.stacked_bars(
        _days([(5, 5)]), [("input_tokens", "bar-input")], lambda row: "<script>x</script>"
    )
    markup = charts.svg(chart, 'say "hi"')
    assert markup.startswith('<svg class="usage-chart"')
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    assert 'aria-label="say &quot;hi&quot;"' in markup


def test_it_labels_at_most_about_eight_days_and_always_today():
    chart = charts.stacked_bars(
        _days([(1, 1)] * 90), [("input_tokens", "bar-input")], lambda row: ""
    )
    assert len(chart.labels) <= 9
    assert chart.labels[-1].text == "05-29"  # the last day of the range
