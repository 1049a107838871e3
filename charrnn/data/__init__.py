"""Text in, token ids out: reading corpora and standard input, tokenisers, the token cache,
training windows."""
