"""The Keras way (issue 21, docs/keras.md): lstmlm.data's PyDatasets, `fit()` against lstmlm's own training step,
fit() on JAX against torch, the standard callbacks, and `save_run` into every lstmlm command.

Tolerance: fit() and lstmlm's step run the same float32 mathematics (SGD with global-norm clipping, dropout off)
in a different order of operations (Keras' sparse cross-entropy and optimizer against lstmlm's fused ones, JAX's
Keras-ops LSTM loop against torch's fused kernel), so losses agree to 1e-5 relative and weights to 1e-5 absolute
after a few dozen steps, where a wrong batch, state or step is off by 1e-2 or more.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import tiny_config, write_corpus

import lstmlm
from lstmlm import run_directory as rd
from lstmlm.data.batches import Batches, stream_batches
from lstmlm.errors import LstmlmError
from lstmlm.keras_fit import ResetStates, save_run
from lstmlm.model.lstm_language_model import build_model

LOSS_TOLERANCE = 1e-5  # relative, per epoch
WEIGHT_TOLERANCE = 1e-5  # absolute, every weight after training


def trainer_module():
    """lstmlm's Trainer and train_step, wherever the training stage keeps them."""
    from lstmlm.training import loop

    if hasattr(loop, "Trainer"):
        return loop
    from lstmlm.training import trainer

    return trainer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("toy"), train_sentences=120, other_sentences=20)


def sgd_config(corpus, **overrides):
    values = dict(optimizer="sgd", learning_rate=0.5, clip_norm=1.0, batch_size=4, num_steps=6, hidden_size=8,
                  dropout=0.0, precision="float32", sum_over_time=False)
    return tiny_config(corpus, **{**values, **overrides})


def new_model(config, vocabulary_size, stateful=False):
    """A model of `config` with seed-1 weights, stateful or not, built for config.batch_size rows."""
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, vocabulary_size)
    if not stateful:
        return model
    twin = lstmlm.LSTMLanguageModel.from_config({**model.get_config(), "stateful": True})
    twin.build((config.batch_size, None))
    for target, source in zip(twin.trainable_weights, model.trainable_weights, strict=True):
        target.assign(source.value)
    return twin


def compiled(model, config):
    model.compile(optimizer=keras.optimizers.SGD(config.learning_rate, global_clipnorm=config.clip_norm),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])
    return model


def weights(model):
    return [keras.ops.convert_to_numpy(w.value) for w in model.trainable_weights]


def lstmlm_epochs(config, model, ids, epochs):
    """Mean training loss per epoch of lstmlm's own step on the config's batches, states carried for streams."""
    module = trainer_module()
    trainer, batches = module.Trainer(config, model, "float32"), Batches(config, ids)
    losses, position = [], 0
    for _ in range(epochs):
        states, total = model.initial_states(config.batch_size), []
        for x, y in batches.epoch(position):
            loss, _, states = module.train_step(trainer, x, y, states)
            states = [tuple(s.detach() for s in pair) for pair in states]
            if not batches.carries_state:
                states = model.initial_states(config.batch_size)
            total.append(float(loss))
        position = batches.position
        losses.append(float(np.mean(total)))
    return losses


# ---- the datasets --------------------------------------------------------------------------------------------
def test_windows_are_lstmlm_window_batches_across_epochs(corpus):
    config = sgd_config(corpus, batching="window", skip_step=5)
    data = lstmlm.data.windows(corpus["train"], num_steps=6, batch_size=4, skip_step=5)
    batches, position = Batches(config, data.ids), 0
    for epoch in range(3):
        expected = list(batches.epoch(position))
        position = batches.position
        assert len(data) == len(expected)
        for index, (x, y) in enumerate(expected):
            got = data[index]
            assert (got[0] == x).all() and (got[1] == y).all(), (epoch, index)
        data.on_epoch_end()
    assert data.vocabulary_size == len(data.vocabulary) and data.vocabulary.words[0] == "the"


def test_streams_are_stream_batches_read_in_order(corpus):
    data = lstmlm.data.streams(corpus["train"], num_steps=6, batch_size=4)
    expected = list(stream_batches(data.ids, 4, 6))
    assert len(data) == len(expected)
    for index, (x, y) in enumerate(expected):
        assert (data[index][0] == x).all() and (data[index][1] == y).all()
    data[0]
    with pytest.raises(LstmlmError, match=r"shuffle=False"):
        data[2]  # a shuffled read would carry the wrong state: an error, not a wrong model


def test_a_validation_set_takes_the_training_vocabulary_and_bad_arguments_are_named(corpus):
    train = lstmlm.data.windows(corpus["train"], num_steps=6, batch_size=4, max_vocabulary_size=10)
    valid = lstmlm.data.windows(corpus["valid"], num_steps=6, batch_size=4, vocabulary=train)
    assert valid.vocabulary is train.vocabulary and train.vocabulary_size == 10
    with pytest.raises(LstmlmError, match="^num_steps must be a positive integer"):
        lstmlm.data.windows(corpus["train"], num_steps=0)
    with pytest.raises(LstmlmError, match="^max_vocabulary_size: give it or a vocabulary"):
        lstmlm.data.streams(corpus["valid"], vocabulary=train, max_vocabulary_size=5)


# ---- fit() against lstmlm's step -------------------------------------------------------------------------------
@pytest.mark.parametrize("batching", ["window", "stream"])
def test_fit_on_torch_reaches_lstmlm_steps_loss(corpus, batching):
    config = sgd_config(corpus, batching=batching)
    stateful = batching == "stream"
    make = lstmlm.data.streams if stateful else lstmlm.data.windows
    data = make(corpus["train"], num_steps=config.num_steps, batch_size=config.batch_size)
    ours = new_model(config, data.vocabulary_size)
    expected = lstmlm_epochs(config, ours, data.ids, epochs=2)
    model = compiled(new_model(config, data.vocabulary_size, stateful), config)
    history = model.fit(data, epochs=2, shuffle=False, verbose=0, callbacks=[ResetStates()] if stateful else [])
    assert history.history["loss"] == pytest.approx(expected, rel=LOSS_TOLERANCE)
    for got, want in zip(weights(model), weights(ours), strict=True):
        np.testing.assert_allclose(got, want, atol=WEIGHT_TOLERANCE)


def test_a_stateless_model_on_streams_is_not_lstmlm_stream_training(corpus):
    """The control for the stateful test above: without the carried state the losses differ beyond tolerance."""
    config = sgd_config(corpus, batching="stream")
    data = lstmlm.data.streams(corpus["train"], num_steps=config.num_steps, batch_size=config.batch_size)
    expected = lstmlm_epochs(config, new_model(config, data.vocabulary_size), data.ids, epochs=1)
    history = compiled(new_model(config, data.vocabulary_size), config).fit(data, shuffle=False, verbose=0)
    assert history.history["loss"][0] != pytest.approx(expected[0], rel=100 * LOSS_TOLERANCE)


JAX_FIT = """
import json, sys
import keras, numpy as np, lstmlm
from lstmlm.keras_fit import ResetStates
initial, train, batching, out = sys.argv[1:]
model = keras.saving.load_model(initial)
make = lstmlm.data.streams if batching == "stream" else lstmlm.data.windows
data = make(train, num_steps=6, batch_size=4)
model.compile(optimizer=keras.optimizers.SGD(0.5, global_clipnorm=1.0),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = model.fit(data, epochs=2, shuffle=False, verbose=0, callbacks=[ResetStates()] if model.stateful else [])
np.savez(out, *[keras.ops.convert_to_numpy(w.value) for w in model.trainable_weights])
print(json.dumps({"backend": keras.backend.backend(), "loss": history.history["loss"]}))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_fit_on_jax_equals_fit_on_torch(corpus, tmp_path):
    for batching in ("window", "stream"):
        config = sgd_config(corpus, batching=batching)
        stateful = batching == "stream"
        make = lstmlm.data.streams if stateful else lstmlm.data.windows
        data = make(corpus["train"], num_steps=config.num_steps, batch_size=config.batch_size)
        model = new_model(config, data.vocabulary_size, stateful)
        initial = tmp_path / f"initial-{batching}.keras"
        model.save(initial)
        result = subprocess.run([sys.executable, "-c", JAX_FIT, str(initial), str(corpus["train"]), batching,
                                 str(tmp_path / f"jax-{batching}.npz")], env={**os.environ, "KERAS_BACKEND": "jax"},
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        on_jax = json.loads(result.stdout.strip().splitlines()[-1])
        history = compiled(model, config).fit(data, epochs=2, shuffle=False, verbose=0,
                                              callbacks=[ResetStates()] if stateful else [])
        assert on_jax["backend"] == "jax"
        assert on_jax["loss"] == pytest.approx(history.history["loss"], rel=LOSS_TOLERANCE)
        jax_weights = np.load(tmp_path / f"jax-{batching}.npz")
        for i, want in enumerate(weights(model)):
            np.testing.assert_allclose(jax_weights[f"arr_{i}"], want, atol=WEIGHT_TOLERANCE)


# ---- callbacks --------------------------------------------------------------------------------------------------
def small_fit(corpus, epochs=2, callbacks=(), data=None, model=None, **fit_arguments):
    config = sgd_config(corpus)
    data = data or lstmlm.data.windows(corpus["train"], num_steps=config.num_steps, batch_size=config.batch_size)
    model = model or compiled(new_model(config, data.vocabulary_size), config)
    return model, model.fit(data, epochs=epochs, shuffle=False, verbose=0, callbacks=list(callbacks),
                            **fit_arguments)


def test_model_checkpoint_writes_the_tutorials_model_nn_files(corpus, tmp_path):
    checkpoint = keras.callbacks.ModelCheckpoint(filepath=str(tmp_path / "model-{epoch:02d}.keras"))
    model, _ = small_fit(corpus, callbacks=[checkpoint])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-01.keras", "model-02.keras"]
    last, first = rd.load_keras_model(tmp_path / "model-02.keras"), rd.load_keras_model(tmp_path / "model-01.keras")
    for got, want in zip(weights(last), weights(model), strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(weights(first), weights(last)))


def test_early_stopping_stops(corpus):
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=1)
    _, history = small_fit(corpus, epochs=10, callbacks=[stop])
    assert history.epoch == [0, 1] and stop.stopped_epoch == 1


def event_scalars(log_dir):
    """{tag: [values]} of every TensorBoard event file under log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for folder in sorted({path.parent for path in log_dir.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(folder))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in events.Scalars(tag))
        for tag in events.Tags().get("tensors", []):  # tf.summary writes scalars as tensors
            scalars.setdefault(tag, []).extend(float(keras.ops.convert_to_numpy(e.tensor_proto.float_val[0]))
                                               for e in events.Tensors(tag))
    return scalars


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_lstmlm_tensorboard_callback_writes_each_epochs_scalars(corpus, tmp_path):
    _, history = small_fit(corpus, callbacks=[lstmlm.keras_fit.TensorBoard(tmp_path / "logs")])
    scalars = event_scalars(tmp_path / "logs")
    assert scalars["train_loss"] == pytest.approx(history.history["loss"], rel=1e-6)
    assert len(scalars["train_perplexity"]) == 2


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="keras.callbacks.TensorBoard writes through tf.summary: it needs TensorFlow")
def test_keras_tensorboard_callback_writes_the_epoch_loss(corpus, tmp_path):
    _, history = small_fit(corpus, callbacks=[keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs"))])
    assert event_scalars(tmp_path / "logs")["epoch_loss"] == pytest.approx(history.history["loss"], rel=1e-6)


class Interrupt(keras.callbacks.Callback):
    """Kill the run at the start of one epoch, as a Ctrl-C or a lost machine would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"interrupted before epoch {epoch + 1}")


def test_backup_and_restore_resumes_a_killed_stateful_run(corpus, tmp_path):
    config = sgd_config(corpus, batching="stream")

    def fresh():  # a new process: a new dataset and a new model from the initial weights
        data = lstmlm.data.streams(corpus["train"], num_steps=config.num_steps, batch_size=config.batch_size)
        return data, compiled(new_model(config, data.vocabulary_size, stateful=True), config)

    data, unbroken = fresh()
    unbroken.fit(data, epochs=3, shuffle=False, verbose=0, callbacks=[ResetStates()])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    data, model = fresh()
    with pytest.raises(KeyboardInterrupt):
        model.fit(data, epochs=3, shuffle=False, verbose=0, callbacks=[ResetStates(), backup, Interrupt(2)])
    data, model = fresh()
    history = model.fit(data, epochs=3, shuffle=False, verbose=0, callbacks=[ResetStates(), backup])
    assert history.epoch == [2]  # only the epoch the kill lost
    for got, want in zip(weights(model), weights(unbroken), strict=True):
        np.testing.assert_allclose(got, want, atol=WEIGHT_TOLERANCE)


class CountAndStop(keras.callbacks.Callback):
    """A user's callback: counts the batches it sees and stops training after `limit` of them."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.losses = limit, []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])
        if len(self.losses) == self.limit:
            self.model.stop_training = True


def test_a_users_callback_sees_every_batch_and_can_stop_training(corpus):
    callback = CountAndStop(limit=3)
    _, history = small_fit(corpus, epochs=5, callbacks=[callback])
    assert len(callback.losses) == 3 and all(np.isfinite(callback.losses)) and history.epoch == [0]


def test_reset_states_refuses_a_stateless_model(corpus):
    with pytest.raises(LstmlmError, match="not stateful"):
        small_fit(corpus, epochs=1, callbacks=[ResetStates()])


# ---- save_run: into lstmlm's commands -------------------------------------------------------------------------------
def lstmlm_command(capsys, *arguments):
    """`lstmlm ARGUMENTS` in this process (the CLI's own main); returns what it printed."""
    from lstmlm.cli import main

    capsys.readouterr()
    status = main([str(argument) for argument in arguments])
    printed = capsys.readouterr()
    assert status == 0, printed.err[-3000:]
    return printed.out


@pytest.fixture(scope="module")
def fit_run(corpus, tmp_path_factory):
    """A stateful model trained by fit() on streams, saved with save_run: (run directory, model, History)."""
    config = sgd_config(corpus, batching="stream")
    data = lstmlm.data.streams(corpus["train"], num_steps=config.num_steps, batch_size=config.batch_size)
    model = compiled(new_model(config, data.vocabulary_size, stateful=True), config)
    history = model.fit(data, epochs=2, shuffle=False, verbose=0, callbacks=[ResetStates()])
    out = save_run(model, data, tmp_path_factory.mktemp("fit") / "run", valid=corpus["valid"], test=corpus["test"],
                   history=history)
    return out, model, history


def test_save_run_writes_what_load_run_reads(fit_run, corpus):
    out, model, history = fit_run
    run = rd.load_run(out)
    assert not run.model.stateful and run.config.batching == "stream" and run.config.train == str(corpus["train"])
    assert [row["train_loss"] for row in run.history] == pytest.approx(history.history["loss"])
    for got, want in zip(weights(run.model), weights(model), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(LstmlmError, match="already holds a run"):
        save_run(model, run.vocabulary, out)


def test_a_fit_trained_run_works_with_every_command(fit_run, tmp_path, capsys):
    out = fit_run[0]
    evaluation = json.loads(lstmlm_command(capsys, "evaluate", out, "--split", "test", "--json"))
    assert evaluation["split"] == "test" and 1 < evaluation["perplexity"] < fit_run[1].vocabulary_size
    prediction = json.loads(lstmlm_command(capsys, "predict", out, "--text", "the cat", "--json"))
    assert len(prediction["predictions"]) == 5 and prediction["unknown_words"] == []
    assert "Predicted words:" in lstmlm_command(capsys, "predict", out, "--split", "valid", "--skip", "0", "--count", 3)
    generated = json.loads(lstmlm_command(capsys, "generate", out, "--prompt", "the dog", "--num-words", 4,
                                          "--temperature", 0, "--json"))
    assert len(generated["words"]) == 4
    if importlib.util.find_spec("onnx") is not None:
        lstmlm_command(capsys, "export", out, "--out", tmp_path / "onnx")
        assert (tmp_path / "onnx" / "model.onnx").is_file()


@pytest.mark.skipif(not all(importlib.util.find_spec(name) for name in ("fastapi", "uvicorn", "httpx")),
                    reason="the serve and test extras (fastapi, uvicorn, httpx) are not installed")
def test_a_fit_trained_run_serves(fit_run):
    import httpx
    from helpers import serving

    from lstmlm.serving.server import create_app

    expected = lstmlm.load(fit_run[0]).predict_next("the cat", top_k=5)["predictions"]
    with serving(create_app(lstmlm.load(fit_run[0]))) as url:
        answer = httpx.post(f"{url}/v1/next", json={"text": "the cat", "top_k": 5}, timeout=30).json()
    assert answer["predictions"] == expected


def test_save_run_of_a_bundled_corpus_names_it_and_refuses_a_wrong_vocabulary(corpus, tmp_path):
    data = lstmlm.data.windows("ptb.valid", num_steps=5, batch_size=2)
    model = lstmlm.LSTMLanguageModel(data.vocabulary_size, 4, 4, 1)
    model.build((None, None))
    config = rd.load_run(save_run(model, data, tmp_path / "run")).config
    assert (config.data, config.train, config.batching, config.num_steps) == ("ptb", None, "window", 5)
    small = lstmlm.data.windows(corpus["train"], num_steps=6, batch_size=4)
    with pytest.raises(LstmlmError, match="the model has 6022 words but the vocabulary"):
        save_run(model, small, tmp_path / "other")
