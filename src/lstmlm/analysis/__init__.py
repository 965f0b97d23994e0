"""Tools that look inside a trained run: the gates of the LSTM cell word by word (gates.py, inspection.py:
`lstmlm inspect`) and the training curves (plots.py: `lstmlm plot`). May import inference, model and the shared
top-level modules.
"""
