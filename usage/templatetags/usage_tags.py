from django import template

register = template.Library()


@register.filter
def num(value) -> str:
    """1234567 -> "1,234,567". Like humanize's intcomma, without its per-call locale work:
    the Usage page formats a few hundred numbers per render (and both languages group
    digits in threes with commas)."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)
