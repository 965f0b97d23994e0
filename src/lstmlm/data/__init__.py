"""The data stage: text -> tokens -> vocabulary -> token ids -> batches.

Owns reading and tokenising corpora (tokenizer.py, streamed with bounded memory), the vocabulary built from the
training split only (vocabulary.py), corpora and their id cache (corpus.py, corpus_cache.py, id_arrays.py), the
batches training reads (batches.py: state-carrying streams and the tutorial's windows), downloading other
corpora (download.py) and the bundled PTB (ptb/, package data). May import lstmlm.errors and lstmlm.files; its
modules import neither Keras nor torch, so reading a corpus stays cheap.
"""
