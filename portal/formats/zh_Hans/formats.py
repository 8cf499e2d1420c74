# Only what differs from Django's zh_Hans formats (which Django still supplies for the rest).
# Django groups Chinese numbers in fours with no separator ("131072"); Chinese developer
# consoles, our docs and the Usage page all write 131,072, so intcomma/localize do too.
THOUSAND_SEPARATOR = ","
NUMBER_GROUPING = 3
