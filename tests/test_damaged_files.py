"""Every file of a run directory, damaged: one line naming the file and the problem, nothing written, no traceback.

Each test copies the shared tiny run, damages one file, and checks the CLI's error contract (`fails`, from
test_errors) and that the copy's bytes are unchanged afterwards.
"""

import io
import json
import shutil
import zipfile

import keras
import numpy as np
import pytest
from helpers import tree_digest
from test_errors import fails

from lstmlm import run_directory as rd
from lstmlm.cli import main
from lstmlm.errors import LstmlmError

VERBS = [["evaluate"], ["predict", "--text", "the cat"], ["generate", "--num-words", "3", "--seed", "1"]]


@pytest.fixture
def run(tiny_run, tmp_path):
    """A private copy of the tiny run (3 epochs: model.keras, model-01..03.keras, optimizer-03.npz)."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def all_verbs_fail(capsys, run_dir, pattern, verbs=VERBS):
    """evaluate / predict / generate each fail with one line matching `pattern`; the directory is unchanged."""
    before = tree_digest(run_dir)
    for verb in verbs:
        fails(capsys, [verb[0], run_dir, *verb[1:]], pattern)
    assert tree_digest(run_dir) == before


def rewrite_member(path, member, change):
    """Rewrite one member of a zip archive (a .keras file) through change(bytes) -> bytes or None (drop it)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            data = change(data) if name == member else data
            if data is not None:
                archive.writestr(name, data)


def flip_member_bytes(path, member):
    """Zero 64 bytes inside a member's stored data, keeping the archive's structure: only the CRC can tell."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    data[start:start + 64] = bytes(64)
    path.write_bytes(bytes(data))


# ---- model.keras ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), r"not a \.keras zip archive: truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), r"not a \.keras zip archive: truncated"),
    (lambda p: p.write_bytes(bytes(p.stat().st_size)), r"not a \.keras zip archive"),
    (lambda p: p.write_bytes(b""), r"\(empty\)"),
    (lambda p: flip_member_bytes(p, "model.weights.h5"), r"model\.weights\.h5 fails its CRC check"),
    (lambda p: rewrite_member(p, "model.weights.h5", lambda data: None), r"the archive has no model\.weights\.h5"),
    (lambda p: rewrite_member(p, "config.json", lambda data: data[:40]), r"Unterminated string|Expecting"),
    (lambda p: rewrite_member(p, "model.weights.h5", lambda data: data[:1000]), r"OSError: .*truncated file"),
], ids=["half", "last-100-bytes", "zeroed", "empty", "crc", "no-weights", "config-json", "weights-truncated"])
def test_damaged_model_file_says_damaged(capsys, run, damage, problem):
    damage(run / "model.keras")
    all_verbs_fail(capsys, run, r"^lstmlm: error: .*/model\.keras: the model file is damaged.*" + problem)


def test_missing_and_damaged_model_are_told_apart(capsys, run):
    (run / "model.keras").unlink()
    all_verbs_fail(capsys, run, r"incomplete run directory, missing model\.keras", VERBS[:1])
    (run / "model.keras").write_bytes(b"PK\x03\x04 and then nothing")
    all_verbs_fail(capsys, run, r"model\.keras: the model file is damaged", VERBS[:1])
    (run / "model.keras").unlink()
    (run / "model.keras").mkdir()
    with pytest.raises(LstmlmError, match=r"model\.keras: not a file"):
        rd.load_keras_model(run / "model.keras")


def test_lambda_layer_is_refused_and_never_runs(capsys, run, tmp_path, monkeypatch):
    """Safe mode: the lambda (which would write a file when the model is rebuilt) is refused, and never runs."""
    marker = tmp_path / "the-lambda-ran"
    monkeypatch.setenv("LSTMLM_TEST_MARKER", str(marker))
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(
        lambda x: (open(__import__("os").environ["LSTMLM_TEST_MARKER"], "w").close(), x)[1])(inputs)
    marker.unlink()  # building the layer above called it once
    keras.Model(inputs, outputs).save(run / "model.keras")
    all_verbs_fail(capsys, run, r"model\.keras: refused in safe mode: it holds Python code \(.*`Lambda` layer")
    assert not marker.exists()
    keras.saving.load_model(run / "model.keras", safe_mode=False)  # the check above can fail: unsafe mode runs it
    assert marker.exists()


def test_unknown_class_is_refused(capsys, run):
    def evil(data):
        config = json.loads(data)
        config.update(module="os", class_name="EvilModel", registered_name="evil>EvilModel")
        return json.dumps(config).encode()

    rewrite_member(run / "model.keras", "config.json", evil)
    all_verbs_fail(capsys, run, r"model\.keras: names a class this lstmlm does not know \('EvilModel'\): only Keras "
                                r"and lstmlm classes are loaded \(safe mode\)")


def test_keras_model_of_another_kind(capsys, run):
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(run / "model.keras")
    all_verbs_fail(capsys, run, r"model\.keras: holds a Sequential, not an lstmlm LSTMLanguageModel")


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", "16", r"hidden_size must be a positive integer, got '16'"),
    ("num_layers", 0, r"num_layers must be a positive integer, got 0"),
    ("dropout", 2.0, r"dropout must be a number in \[0, 1\), got 2\.0"),
    ("hidden_size", 17, r"lstm_1' expected 3 variables, but received 0"),  # the weights do not fit the config
])
def test_model_config_edited_by_hand(capsys, run, field, value, message):
    def edit(data):
        config = json.loads(data)
        config["config"][field] = value
        return json.dumps(config).encode()

    rewrite_member(run / "model.keras", "config.json", edit)
    all_verbs_fail(capsys, run, r"model\.keras: the model file is damaged or not an lstmlm model \(ValueError: .*"
                   + message, VERBS[:1])


# ---- config.json and format_version -------------------------------------------------------------------

def edit_json(path, change):
    values = json.loads(path.read_text(encoding="utf-8"))
    change(values)
    path.write_text(json.dumps(values), encoding="utf-8")


def test_newer_format_is_refused(capsys, run):
    edit_json(run / "config.json", lambda info: info.update(format_version=rd.FORMAT_VERSION + 1))
    all_verbs_fail(capsys, run, rf"config\.json: written by a newer lstmlm \(format {rd.FORMAT_VERSION + 1}, this "
                                rf"lstmlm reads up to {rd.FORMAT_VERSION}\)$")
    with pytest.raises(LstmlmError, match="written by a newer lstmlm"):
        rd.read_state(run)


@pytest.mark.parametrize("version", [0, -1, "1", 1.5, True, None])
def test_format_version_must_be_a_positive_whole_number(capsys, run, version):
    edit_json(run / "config.json", lambda info: info.update(format_version=version))
    all_verbs_fail(capsys, run, rf"config\.json: format_version must be a positive whole number, got "
                                rf"{repr(version).replace('.', '[.]')}$", VERBS[:1])


def test_format_version_absent_or_current_loads(run, capsys):
    assert "format_version" not in json.loads((run / "config.json").read_text())  # runs written so far
    assert rd.check_format_version({}, "x") == 1
    assert main(["evaluate", str(run)]) == 0
    edit_json(run / "config.json", lambda info: info.update(format_version=rd.FORMAT_VERSION))
    assert main(["evaluate", str(run)]) == 0
    assert rd.read_state(run).values["epoch"] == 3
    capsys.readouterr()


@pytest.mark.parametrize("content, problem", [
    (b"[1, 2]", r"expected a JSON object, found list"),
    (b'{"command": "lstmlm train"}', r'expected a "config" object of config fields'),
    (b'{"config": {"hidden_size": 16, "widht": 3}}', r"unknown config key\(s\): widht"),
    (b'{"config": {"hidden_size": "16"}}', r"config field hidden_size must be int, got '16'"),
    (b'{"config": {"lowercase": 1}}', r"config field lowercase must be bool, got 1"),
    (b'{"config": {"num_steps": true}}', r"config field num_steps must be int, got True"),
    (b'{"config": {"batch_size": -3}}', r"--batch-size must be a positive integer, got -3"),
    (b'{"config": {"train": "a.txt"}}', r"--train and --valid must be given together"),
    (b'{"config": {}, "note": "caf\xe9"}', r"not UTF-8 text \(at byte 27\)"),
    (b'{"config": ', r"not valid JSON"),
], ids=["list", "no-config", "unknown-key", "str-for-int", "int-for-bool", "bool-for-int", "negative", "train-only",
        "latin-1", "truncated"])
def test_damaged_config_json(capsys, run, content, problem):
    (run / "config.json").write_bytes(content)
    all_verbs_fail(capsys, run, r"^lstmlm: error: .*/config\.json: .*" + problem, VERBS[:2])


# ---- vocab.txt and history.csv ----------------------------------------------------------------------------

@pytest.mark.parametrize("damage, problem", [
    (lambda text: text.encode() + b"caf\xe9\t1\n", r"line 27: bytes that are not UTF-8"),
    (lambda text: text.replace("\t", " ", 1).encode(), r"line 1: expected 'word<TAB>count'"),
    (lambda text: (text + text.splitlines()[3] + "\n").encode(), r"line 27: '\S+' is repeated \(first on line 4\)"),
    (lambda text: text.replace("\t", "\t\u00b2", 1).encode(), r"line 1: expected 'word<TAB>count'"),  # '²'.isdigit()
    (lambda text: ("two words\t3\n" + text).encode(), r"line 1: the word 'two words' contains whitespace"),
    (lambda text: b"", r"the vocabulary has no <unk> entry"),
], ids=["latin-1", "no-tab", "duplicate", "superscript-digit", "space", "empty"])
def test_damaged_vocabulary(capsys, run, damage, problem):
    path = run / "vocab.txt"
    assert len(path.read_text(encoding="utf-8").splitlines()) == 26
    path.write_bytes(damage(path.read_text(encoding="utf-8")))
    all_verbs_fail(capsys, run, r"^lstmlm: error: .*/vocab\.txt: " + problem)


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data + b"4,caf\xe9\n", r"line 5: bytes that are not UTF-8"),
    (lambda data: b"", r"line 1: expected a header of distinct column names, found None"),
    (lambda data: data + b"4,1.5\n", r"line 5: 2 fields, the header has 15"),
    (lambda data: data.replace(b"\n3,", b"\nthree,"), r"line 4: epoch 'three' is not a whole number"),
    (lambda data: b"epoch,epoch\n1,1\n", r"line 1: expected a header of distinct column names"),
    (lambda data: data[:-30] + b'"unterminated\n', r"line \d: (not valid CSV|\d+ fields)"),
], ids=["latin-1", "empty", "short-row", "epoch-word", "repeated-column", "quote"])
def test_damaged_history(capsys, run, tmp_path, damage, problem):
    path = run / "history.csv"
    assert path.read_bytes().count(b"\n") == 4  # header + 3 epochs
    path.write_bytes(damage(path.read_bytes()))
    all_verbs_fail(capsys, run, r"^lstmlm: error: .*/history\.csv: " + problem, VERBS[:1])
    fails(capsys, ["plot", run, "--out", tmp_path / "plots"], r"history\.csv: " + problem)
    assert not (tmp_path / "plots").exists()


def test_history_blank_lines_are_not_damage(run):
    rows = rd.read_history(run / "history.csv")
    (run / "history.csv").write_bytes((run / "history.csv").read_bytes() + b"\n\n")
    assert rd.read_history(run / "history.csv") == rows and [row["epoch"] for row in rows] == [1, 2, 3]


def save_npy(path, array):
    with open(path, "wb") as file:  # np.save(path) would add ".npy" to the name
        np.save(file, array)


# ---- arrays (.npz) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("write, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), r"damaged array file"),
    (lambda p: p.write_bytes(b"plain text"), r"damaged array file \(.*pickle"),
    (lambda p: save_npy(p, np.zeros(3)), r"damaged array file \(a single \.npy array, expected an "
                                                    r"\.npz archive\)"),
    (lambda p: np.savez(p, bad=np.array([{"a": 1}], dtype=object)), r"damaged array file \(.*pickle"),
    (lambda p: p.unlink(), r"no such file"),
], ids=["truncated", "text", "npy", "object-array", "missing"])
def test_load_arrays_rejects_damaged_files(run, write, problem):
    path = run / "checkpoints" / "optimizer-03.npz"
    assert set(rd.load_arrays(path)) >= {"0.exp_avg", "0.exp_avg_sq", "0.step"}
    write(path)
    with pytest.raises(LstmlmError, match=r"optimizer-03\.npz: " + problem):
        rd.load_arrays(path)


# ---- state.json and read_state (what --resume reads) ------------------------------------------------------

def test_read_state_of_a_finished_run(run):
    saved = rd.read_state(run)
    assert saved.values["epoch"] == 3 and saved.values["batch"] == 0 and saved.states is None
    assert saved.values["checkpoint"] == "checkpoints/model-03.keras"
    assert saved.model.vocabulary_size == 26 and saved.config.hidden_size == 16
    assert {name.split(".", 1)[1] for name in saved.optimizer} == {"step", "exp_avg", "exp_avg_sq"}
    (run / "state.json").unlink()
    assert rd.read_state(run) is None  # stopped before its first checkpoint: start over from config.json


def test_read_state_of_an_interrupted_run(toy_corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C mid-epoch writes the LSTM states too; read_state loads them, one (h, c) pair per layer."""
    from lstmlm.training import epoch as epoch_module
    from test_errors import train_argv

    calls, real_step = [], epoch_module.train_step

    def interrupting_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_step", interrupting_step)
    assert main([str(a) for a in train_argv(toy_corpus, tmp_path / "out")]) == 130
    capsys.readouterr()
    saved = rd.read_state(tmp_path / "out")
    assert saved.values["batch"] == 2 and saved.values["checkpoint"] == "checkpoints/interrupted.keras"
    assert sorted(saved.states) == ["c0", "c1", "h0", "h1"] and saved.states["h0"].shape == (8, 8)
    (tmp_path / "out" / saved.values["states"]).unlink()
    with pytest.raises(LstmlmError, match=r"states-interrupted\.npz: named in state\.json as the LSTM states but "
                                          r"missing$"):
        rd.read_state(tmp_path / "out")


def edit_state(run, **changes):
    edit_json(run / "state.json", lambda state: state.update(changes))


@pytest.mark.parametrize("damage, problem", [
    (lambda run: (run / "checkpoints" / "optimizer-03.npz").unlink(),
     r"checkpoints/optimizer-03\.npz: named in state\.json as the optimizer state but missing$"),
    (lambda run: (run / "checkpoints" / "optimizer-03.npz").write_bytes(b"PK\x03\x04"),
     r"checkpoints/optimizer-03\.npz: damaged array file"),
    (lambda run: np.savez(run / "checkpoints" / "optimizer-03.npz", weights=np.zeros(3)),
     r"optimizer-03\.npz: not an optimizer state \(array 'weights'\)"),
    (lambda run: (run / "checkpoints" / "model-03.keras").unlink(),
     r"checkpoints/model-03\.keras: named in state\.json as the checkpoint but missing$"),
    (lambda run: (run / "checkpoints" / "model-03.keras").write_bytes(bytes(1000)),
     r"checkpoints/model-03\.keras: the model file is damaged \(not a \.keras zip archive"),
    (lambda run: edit_state(run, states="checkpoints/states-03.npz"),
     r"checkpoints/states-03\.npz: named in state\.json as the LSTM states but missing$"),
    (lambda run: (np.savez(run / "checkpoints" / "states-03.npz", h0=np.zeros((8, 16))),
                  edit_state(run, states="checkpoints/states-03.npz")),
     r"states-03\.npz: expected the arrays c0, c1, h0, h1 of 2 layers, found h0$"),
    (lambda run: edit_state(run, optimizer="../../etc/passwd"),
     r"state\.json: 'optimizer' must be a path inside the run directory, got '\.\./\.\./etc/passwd'"),
    (lambda run: edit_state(run, checkpoint="/etc/passwd"), r"'checkpoint' must be a path inside the run directory"),
    (lambda run: edit_json(run / "state.json", lambda state: state.pop("optimizer")),
     r"state\.json: missing 'optimizer' \(the optimizer state"),
    (lambda run: edit_state(run, epoch="3"), r"state\.json: 'epoch' must be int, got '3'"),
    (lambda run: edit_state(run, batch=True), r"state\.json: 'batch' must be int, got True"),
    (lambda run: edit_state(run, epoch=-1), r"state\.json: 'epoch' must be >= 0, got -1"),
    (lambda run: edit_state(run, batch=4), r"batch 4 of an epoch is done but 'partial_sums' is null"),
    (lambda run: edit_state(run, batch=4, partial_sums={"loss": 1.0, "hits": 0, "tokens": 8}),
     r"batch 4 of an epoch is done but 'states' is null"),
    (lambda run: edit_state(run, epoch=5), r"history\.csv: 3 rows, but state\.json says 5 epochs are done"),
    (lambda run: (run / "state.json").write_bytes(b'{"epoch": 3,'), r"state\.json: not valid JSON"),
    (lambda run: (run / "state.json").write_bytes(b"[]"), r"state\.json: expected a JSON object, found list"),
    (lambda run: (run / "vocab.txt").write_text("<unk>\t0\n", encoding="utf-8"),
     r"model-03\.keras: model has 26 words but vocab\.txt has 1"),
], ids=["optimizer-missing", "optimizer-damaged", "optimizer-foreign", "checkpoint-missing", "checkpoint-zeroed",
        "states-missing", "states-layers", "path-escapes", "absolute-path", "key-missing", "epoch-string",
        "batch-bool", "epoch-negative", "partial-sums", "states-null", "history-short", "truncated", "list",
        "vocabulary-size"])
def test_read_state_names_the_damaged_file(run, damage, problem):
    damage(run)
    before = tree_digest(run)
    with pytest.raises(LstmlmError, match=problem):
        rd.read_state(run)
    assert tree_digest(run) == before


# Through the CLI: `train --resume` gives the same one line as read_state and writes nothing.
@pytest.mark.parametrize("damage, problem", [
    pytest.param(lambda run: (run / "checkpoints" / "optimizer-03.npz").unlink(),
                 r"optimizer-03\.npz: named in state\.json as the optimizer state but missing",
                 id="optimizer-missing"),
    pytest.param(lambda run: (run / "checkpoints" / "optimizer-03.npz").write_bytes(b"PK\x03\x04"),
                 r"optimizer-03\.npz: damaged array file", id="optimizer-damaged"),
    pytest.param(lambda run: edit_json(run / "state.json", lambda state: state.pop("optimizer")),
                 r"state\.json: missing 'optimizer'", id="key-missing"),
    pytest.param(lambda run: edit_json(run / "config.json", lambda info: info.update(format_version=99)),
                 r"config\.json: written by a newer lstmlm \(format 99", id="newer-format"),
    pytest.param(lambda run: (run / "checkpoints" / "model-03.keras").write_bytes(bytes(1000)),
                 r"model-03\.keras: the model file is damaged", id="checkpoint-zeroed"),
    pytest.param(lambda run: (run / "vocab.txt").write_bytes(b"caf\xe9\t1\n"),
                 r"vocab\.txt: line 1: bytes that are not UTF-8", id="vocabulary"),
])
def test_resume_from_a_damaged_run(capsys, run, damage, problem):
    damage(run)
    before = tree_digest(run)
    fails(capsys, ["train", "--resume", run, "--epochs", "4", "--no-report"], problem)
    assert tree_digest(run) == before
