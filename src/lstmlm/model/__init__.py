"""The model stage: the Keras network and its layers.

Owns the language model (lstm_language_model.py: Embedding -> LSTM x N -> Dropout -> softmax layer), the LSTM
layer (lstm.py) and the cell's equations that every other copy of the cell uses (cell.py), the adaptive softmax
(adaptive_softmax.py) and the regularisation techniques, one per function (regularization.py). Every class is a
registered, serializable Keras object. May import lstmlm.torch_backend and lstmlm.errors; never training,
inference or serving.
"""
