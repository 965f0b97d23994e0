"""Shared fixtures: a small synthetic corpus on disk, one tiny trained run directory for the whole session,
and one server serving it. The plain helpers they use are in tests/helpers.py.

Everything is sized to train in seconds on two busy CPU cores. The run directory is shared: a test that writes
into a run directory copies it first (shutil.copytree into tmp_path).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")
# The corpus cache (lstmlm.data.corpus_cache) goes to a scratch folder removed at exit, for this process and the
# CLI subprocesses it starts: the suite never writes into the user's home and never reads a stale cache there.
_CORPUS_CACHE = tempfile.mkdtemp(prefix="lstmlm-test-cache-")
atexit.register(shutil.rmtree, _CORPUS_CACHE, True)
os.environ["LSTMLM_CACHE_DIR"] = _CORPUS_CACHE
os.environ.pop("LSTMLM_NO_CACHE", None)

import pytest  # noqa: E402

import lstmlm  # noqa: E402,F401  (registers the Keras classes)
from helpers import serving, tensorboard_installed, tiny_config, tree_digest, write_corpus  # noqa: E402,F401

try:  # keep the suite off the second core, which long training runs may be using
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    """{'train', 'valid', 'test'} -> Path of the toy corpus files (read-only for tests)."""
    return write_corpus(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def tiny_run(toy_corpus, tmp_path_factory):
    """A run directory trained for 3 epochs on the toy corpus (2 layers of 16 units), with TensorBoard logs
    when the package is installed. Tests must not modify it (copy it first)."""
    from lstmlm.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    lines = []
    train(tiny_config(toy_corpus, epochs=3, tensorboard=tensorboard_installed()), out=out, log=lines.append,
          command=["lstmlm", "train", "--preset", "tiny"], progress=False)
    return out


@pytest.fixture(scope="session")
def loaded_tiny(tiny_run):
    """The tiny run loaded as a LanguageModel (shared, read-only)."""
    from lstmlm.inference.language_model import load

    return load(tiny_run)


@pytest.fixture(scope="session")
def server_url(tiny_run):
    """The base URL of a uvicorn server (in a thread) serving the tiny run; stopped after the session.

    The server loads its own LanguageModel: a request still in flight (a browser page closing) must never run
    on the same object as a test calling `loaded_tiny` directly.
    """
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    from lstmlm.inference.language_model import load
    from lstmlm.serving.server import create_app

    with serving(create_app(load(tiny_run))) as url:
        yield url
