"""The data stage: text -> tokens -> vocabulary -> token ids -> batches.

Owns reading and tokenising corpora (tokenizer.py, streamed with bounded memory), the vocabulary built from the
training split only (vocabulary.py), corpora and their id cache (corpus.py, corpus_cache.py, id_arrays.py), the
batches training reads (batches.py: state-carrying streams and the tutorial's windows), the same batches as Keras
PyDatasets for `model.fit()` (keras_datasets.py: `lstmlm.data.windows` and `lstmlm.data.streams`), downloading
other corpora (download.py) and the bundled PTB (ptb/, package data). May import lstmlm.errors and lstmlm.files;
keras_datasets.py is the one module that imports Keras (and is imported only when `windows` or `streams` is first
used), the others import neither Keras nor torch, so reading a corpus stays cheap.
"""

import importlib

_EXPORTS = {"windows": "lstmlm.data.keras_datasets", "streams": "lstmlm.data.keras_datasets"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lstmlm.data' has no attribute {name!r}")
