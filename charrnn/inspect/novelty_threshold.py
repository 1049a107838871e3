"""The default --min-span of `charrnn novelty`, apart from the search so that `--help` stays light."""

# Characters. A chance match between two texts grows like log2(N * n) / h, with N and n their
# lengths and h the entropy in bits per character: a 1 MB corpus and a 2,000-character text at
# 1.5-2 bits per character give 31 bits / 1.5-2 = 15-21 characters; 100 MB adds 6.6 bits and
# 1 GB 10 bits, 3-7 characters more. Measured on held-out text (the validation 10% of each
# corpus against its training 90%, 2,000 characters at a time; docs/novelty.md): prose's
# longest span has a median of 21 and never passed 31, and none of it is in spans of >= 50;
# code shares real boilerplate (licence headers, imports), 5.7% of it in spans of >= 50.
# 50 characters (8-10 English words, a line of code) is well past chance at any size.
DEFAULT_MIN_SPAN = 50

# The largest --min-span taken: longer than any text a machine holds an index for (a span is at
# most as long as the training text); past it a number is a typo, said so at once.
MAX_MIN_SPAN = 10**12
