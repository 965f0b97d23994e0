"""A Keras 3 transcription of the tutorial's own model and training step, for benchmarks only.

adventuresinmachinelearning.com "Keras LSTM tutorial" (keras_lstm.py): Sequential Embedding -> LSTM
(return_sequences) x2 -> Dropout -> TimeDistributed(Dense(vocabulary)) -> Activation('softmax'), one-hot
targets from `to_categorical` (done per batch by the tutorial's KerasBatchGenerator), categorical
cross-entropy, Adam, metrics=['categorical_accuracy']. `fit_generator` is gone from Keras 3; one
`train_on_batch` per generator batch is the same work.
"""

import keras
import numpy as np


def build(vocabulary_size, hidden_size, num_steps, dropout=0.5, optimizer="adam"):
    layers = [
        keras.Input((num_steps,), dtype="int32"),
        keras.layers.Embedding(vocabulary_size, hidden_size),
        keras.layers.LSTM(hidden_size, return_sequences=True),
        keras.layers.LSTM(hidden_size, return_sequences=True),
    ]
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout))
    layers += [keras.layers.TimeDistributed(keras.layers.Dense(vocabulary_size)), keras.layers.Activation("softmax")]
    model = keras.Sequential(layers)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["categorical_accuracy"])
    return model


def train_step(model, x, y, vocabulary_size):
    """One generator batch: one-hot the targets (as the tutorial's generator does), then train_on_batch.
    Returns the loss as a float."""
    one_hot = keras.utils.to_categorical(y, num_classes=vocabulary_size).astype(np.float32)
    loss, _accuracy = model.train_on_batch(np.asarray(x, dtype=np.int32), one_hot)
    return float(loss)
