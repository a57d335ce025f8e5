"""The files of `train --save`: measured without --json, written before printing (closed pipes), destinations
checked before training, and every damaged or foreign file is one error line naming what is wrong."""
import argparse
import os
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import corrupt_member, run_cli
from smoothness.cli import commands
from smoothness.errors import SmoothnessError
from smoothness.experiments.running import pipeline

SMALL = ["--hidden", "8", "--n-train", "16", "--max-epochs", "3", "--segments", "5", "--points", "5",
         "--measure-points", "20", "--device", "cpu"]
MEASURE = ["--segments", "5", "--points", "5", "--measure-points", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "m.pt"
    r = run_cli("train", *SMALL, "--save", path)
    assert r.returncode == 0, r.stderr
    return path


def _parts(folder):
    return [p.name for p in folder.iterdir() if ".part-" in p.name]


def _measure_in_process(path, capsys):
    """`smoothness measure PATH` in this process: (exit status, stdout, stderr lines); no warning may appear."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = commands.main(["measure", str(path), *MEASURE])
    out, err = capsys.readouterr()
    assert not caught, [str(w.message) for w in caught]
    return code, out, err.strip().splitlines()


# -- 1: measure without --json ---------------------------------------------------------------------

def test_measure_prints_a_saved_file_without_json(saved):
    r = run_cli("measure", saved, *MEASURE)
    assert r.returncode == 0, r.stderr
    assert "not_converged after 3 epochs (3 steps)" in r.stdout and "gradient_norm" in r.stdout


# -- 2: a closed stdout --------------------------------------------------------------------------

def _closed_pipe(*args):
    """Run the CLI with stdout a pipe whose reader is gone before anything is written (`... | true`)."""
    p = subprocess.Popen([sys.executable, "-m", "smoothness", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    return p.wait(timeout=300), err


@pytest.mark.parametrize("json", [True, False])
def test_train_into_a_closed_pipe_saves_and_ends_quietly(tmp_path, json):
    code, err = _closed_pipe("train", *SMALL, "--save", tmp_path / "x.pt", *(["--json"] if json else []))
    assert (code, err) == (141, "")
    assert len(pipeline.load_models(tmp_path / "x.pt")) == 1 and not _parts(tmp_path)


def test_presets_into_a_closed_pipe_and_into_head(tmp_path):
    assert _closed_pipe("presets") == (141, "")
    r = subprocess.run(f"{sys.executable} -m smoothness presets | head -1", shell=True, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("smoke ")


# -- 3: the destination is checked before training; no .part files ---------------------------------

@pytest.mark.parametrize("where, msg", [("missing/x.pt", "does not exist"), ("folder.pt", "is a folder"),
                                        ("folder.pt/", "is a folder"), ("plain/x.pt", "is not a folder")])
def test_bad_save_destination_fails_before_training(tmp_path, where, msg):
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "plain").write_text("a file")
    r = run_cli("train", *SMALL, "--save", f"{tmp_path}/{where}")
    assert r.returncode == 2 and r.stdout == ""   # nothing trained: results would be printed
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smoothness: error: --save") and msg in lines[0]
    assert not _parts(tmp_path) and not _parts(tmp_path / "folder.pt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_save_folder_fails_before_training(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(SmoothnessError, match="not writable"):
        pipeline.check_save_path(tmp_path / "ro" / "x.pt")


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_save_failure_leaves_no_part_file(tmp_path, monkeypatch, saved, failure):
    records = [{**r["meta"], "params": r["params"]} for r in pipeline.load_models(saved)]
    real_save = torch.save

    def half_then_fail(obj, f):
        real_save(obj, f)
        raise failure

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(SmoothnessError if isinstance(failure, OSError) else KeyboardInterrupt):
        pipeline.save_models(tmp_path / "x.pt", records)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    with pytest.raises(SmoothnessError, match="cannot write .*x.pt: .*cross-device"):
        pipeline.save_models(tmp_path / "x.pt", records)
    assert list(tmp_path.iterdir()) == []


# -- 5: files that are no model files ------------------------------------------------------------

def _write(kind, path, saved):
    if kind == "truncated":
        path.write_bytes(saved.read_bytes()[:5000])
    elif kind == "text":
        path.write_text("hello\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "plain pickle":
        import pickle
        path.write_bytes(pickle.dumps({"format": "smoothness-models/1"}))
    elif kind == "refused object":
        torch.save({"format": "smoothness-models/1", "models": [argparse.Namespace(a=1)]}, path)


@pytest.mark.parametrize("kind, msg", [("truncated", "truncated or corrupt"), ("text", "not a PyTorch archive"),
                                       ("empty", "empty"), ("plain pickle", "not a PyTorch archive"),
                                       ("refused object", "argparse.Namespace, which safe loading refuses")])
def test_unloadable_file_is_one_line_of_ours(tmp_path, saved, capsys, kind, msg):
    p = tmp_path / "bad.pt"
    _write(kind, p, saved)
    code, out, err = _measure_in_process(p, capsys)
    assert code == 2 and out == "" and len(err) == 1, err
    assert err[0].startswith(f"smoothness: error: {p} is not a smoothness model file") and msg in err[0]
    assert "weights_only" not in err[0] and "Traceback" not in err[0]


def test_a_saved_file_with_a_damaged_member_is_one_line_naming_it(tmp_path, saved, capsys):
    p = tmp_path / "bad.pt"
    p.write_bytes(saved.read_bytes())
    member = corrupt_member(p)   # the first layer's weights: torch.load reads them without a word
    code, out, err = _measure_in_process(p, capsys)
    assert code == 2 and out == "" and len(err) == 1, err
    assert err[0] == f"smoothness: error: {p} is corrupt: the member {member} does not match its CRC-32"


def test_refused_pickle_from_the_command_line(tmp_path, saved):
    p = tmp_path / "bad.pt"
    _write("refused object", p, saved)
    r = run_cli("measure", p)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "weights_only" not in r.stderr and "argparse.Namespace" in r.stderr


# -- 6: hand-edited files ------------------------------------------------------------------------

def _edit(blob, what):
    rec = blob["models"][0]
    meta, params = rec["meta"], rec["params"]
    w, b = params["weights"], params["biases"]
    if what == "no pair":
        del meta["pair"]
    elif what == "no n_train":
        del meta["n_train"]
    elif what == "record is a list":
        blob["models"][0] = [meta, params]
    elif what == "meta is a string":
        rec["meta"] = "n_train 16"
    elif what == "n_train a string":
        meta["n_train"] = "sixteen"
    elif what == "lr a string":
        meta["lr"] = "fast"
    elif what == "three digits":
        meta["pair"] = [3, 8, 9]
    elif what == "int32 weights":
        w[0] = w[0].to(torch.int32)
    elif what == "layers do not chain":
        w[1] = torch.zeros(1, 1, 9)
    elif what == "bias of the wrong width":
        b[0] = torch.zeros(1, 5)
    elif what == "a layer missing":
        params["weights"] = w[:1]
    elif what == "squeezed weights":
        w[0] = w[0][0]
    elif what == "two outputs":
        w[1], b[1] = torch.zeros(1, 2, 8), torch.zeros(1, 2)
    elif what == "hidden disagrees":
        meta["hidden"] = [16]
    elif what == "weights not tensors":
        w[0] = w[0].tolist()
    elif what == "no models":
        blob["models"] = []
    elif what == "other format":
        blob["format"] = "other/2"
    return blob


CORRUPTIONS = [("no pair", "lacks 'pair'"), ("no n_train", "lacks 'n_train'"),
               ("record is a list", "not a dict with 'meta' and 'params'"), ("meta is a string", "'meta' is a str"),
               ("n_train a string", "'n_train' is 'sixteen', expected a int"),
               ("lr a string", "'lr' is 'fast', expected a number"), ("three digits", "expected two digits"),
               ("int32 weights", "weights[0] has dtype int32, expected float32"),
               ("layers do not chain", "layer 1 has weights [1, 1, 9]"), ("bias of the wrong width", "layer 0"),
               ("a layer missing", "1 weight and 2 bias tensors"), ("squeezed weights", "weights[0] has shape [8, 784]"),
               ("two outputs", "the last layer has 2 outputs"), ("hidden disagrees", "do not match the recorded hidden"),
               ("weights not tensors", "weights[0] is a list, not a dense tensor"),
               ("no models", "'models' is not a non-empty list"), ("other format", "expected format")]


@pytest.mark.parametrize("what, msg", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_hand_edited_file_is_one_line_naming_what_is_wrong(tmp_path, saved, capsys, what, msg):
    p = tmp_path / "edited.pt"
    torch.save(_edit(torch.load(saved, weights_only=True), what), p)
    code, out, err = _measure_in_process(p, capsys)
    assert code == 2 and out == "" and len(err) == 1, err
    assert err[0].startswith(f"smoothness: error: {p}") and msg in err[0], err[0]


def test_bad_values_in_a_file_name_the_file(tmp_path, saved, capsys):
    blob = torch.load(saved, weights_only=True)
    blob["models"][0]["meta"]["lr"] = -1.0
    torch.save(blob, tmp_path / "neg.pt")
    code, out, err = _measure_in_process(tmp_path / "neg.pt", capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"smoothness: error: {tmp_path / 'neg.pt'}: model 1: invalid lr: -1.0")


def test_nan_weights_are_a_diverged_model_not_a_corrupt_file(tmp_path, saved):
    blob = torch.load(saved, weights_only=True)
    blob["models"][0]["params"]["weights"][0][0, 0, 0] = float("nan")
    torch.save(blob, tmp_path / "nan.pt")
    r = run_cli("measure", tmp_path / "nan.pt", *MEASURE, "--json")
    assert r.returncode == 0, r.stderr
    assert '"gradient_norm": null' in r.stdout
