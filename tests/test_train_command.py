"""``lookalike train``: train on a project's catalogue, index the model, query it, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lookalike.catalogue.sources import demo_parquet
from lookalike.cli import app
from lookalike.project import Project

CLASSES = ["Tshirts", "Shirts", "Casual Shoes", "Watches", "Sports Shoes", "Handbags"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project holding six article types of the demo catalogue (about 900 photos)."""
    folder = tmp_path_factory.mktemp("train-command")
    frame = pd.read_parquet(demo_parquet())
    frame = frame[frame["article_type"].isin(CLASSES)]
    manifest = folder / "shop.parquet"
    frame.to_parquet(manifest)  # the products columns: image_jpeg, article_type, split, ...
    code, output = invoke("ingest", str(manifest), "--project", str(folder / "p"))
    assert code == 0, output
    return folder / "p"


@pytest.fixture(scope="module")
def first_run(project_dir: Path) -> dict:
    code, output = invoke("train", "cnn", "--name", "shop-cnn", "--epochs", "1", "--seed", "3",
                          "--option", "patience=0", "--option", "batch_size=32", "--project",
                          str(project_dir), "--json")
    assert code == 0, output
    return json.loads(output)


def test_train_writes_a_loadable_model_and_checkpoints(first_run: dict, project_dir: Path) -> None:
    folder = project_dir / "models" / "shop-cnn"
    assert first_run["model_dir"] == str(folder)
    assert first_run["classes"] == len(CLASSES) and first_run["label_column"] == "article_type"
    assert first_run["image_size"] == [60, 80]  # follows the catalogue's photos
    frame = Project(project_dir, create=False).store.frame()
    assert first_run["items"] == int((frame["split"] == "train").sum())  # train split only
    history = first_run["result"]["history"]
    # 6 classes; the most frequent (T-shirts) is 37% of them
    assert len(history) == 1 and history[0]["val_accuracy"] > 0.5, history
    assert (folder / "config.json").is_file() and (folder / "weights.safetensors").is_file()
    assert (folder / "checkpoints" / "epoch-0001.json").is_file()
    assert first_run["index_command"] == "lookalike index --embedder models/shop-cnn"


def test_index_the_trained_model_then_query(first_run: dict, project_dir: Path) -> None:
    code, output = invoke("index", "--embedder", "models/shop-cnn", "--name", "learned",
                          "--project", str(project_dir))
    assert code == 0, output
    project = Project(project_dir, create=False)
    item = project.store.frame().index[0]
    code, output = invoke("similar", str(item), "--index", "learned", "-k", "5", "--json",
                          "--project", str(project_dir))
    assert code == 0, output
    results = json.loads(output)["results"]
    assert len(results) == 5 and item not in {r["id"] for r in results}
    assert project.indexes()["learned"]["embedder_id"] == first_run["embedder_id"]


def test_resume_continues_the_run(first_run: dict, project_dir: Path) -> None:
    code, output = invoke("train", "cnn", "--name", "shop-cnn", "--epochs", "2", "--seed", "3",
                          "--option", "patience=0", "--option", "batch_size=32", "--resume",
                          "--project", str(project_dir), "--json")
    assert code == 0, output
    history = json.loads(output)["result"]["history"]
    assert len(history) == 2
    assert history[0] == first_run["result"]["history"][0]  # epoch 1 came from the checkpoint


def test_reduction_trains_through_the_project(project_dir: Path) -> None:
    project = Project(project_dir, create=False)
    summary = project.train("pca", name="small", options={"base": "pixels", "dim": 16},
                            progress=False)
    assert summary.dim == 16 and summary.result["items"] == summary.items
    index = project.index(embedder="models/small", name="small", progress=False)
    assert index.dim == 16 and index.embedder_id == summary.embedder_id


def test_user_mistakes_are_one_line_errors(project_dir: Path) -> None:
    for args, message in (
            (["train", "pixels"], "does not learn"),
            (["train", "nosuch"], "unknown embedder"),
            (["train", "cnn", "--label-column", "nope"], "label column 'nope'"),
            (["train", "cnn", "--option", "epochs"], "expected KEY=VALUE"),
            (["train", "cnn", "--option", "epoch=2"], "unknown training option"),
            (["train", "cnn", "--name", "../x"], "model name"),
            (["train", "cnn", "--image-size", "big"], "WIDTHxHEIGHT")):
        code, output = invoke(*args, "--project", str(project_dir))
        assert code == 1 and message in output, (args, output)
        assert "Traceback" not in output


@pytest.mark.parametrize("module", ["lookalike", "lookalike.cli"])
def test_python_dash_m_runs_the_full_command_set(module: str) -> None:
    import subprocess
    import sys

    # Commands register on lookalike.cli's app; `-m lookalike.cli` once ran a copy without them.
    result = subprocess.run([sys.executable, "-m", module, "train", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--resume" in result.stdout


# ---- what the command tells a newcomer ----------------------------------------------------------
def _trainable() -> list[str]:
    from lookalike.models import base as models

    return [name for name in models.available() if models.embedder_class(name).needs_fit]


def test_list_json_has_every_trainable_method_with_its_settings() -> None:
    import inspect

    from lookalike.models import base as models
    from lookalike.models.activations import ACTIVATIONS

    code, output = invoke("train", "--list", "--json")
    assert code == 0, output
    listing = json.loads(output)
    trainable = _trainable()
    assert {"cnn", "cnn-hash", "finetune", "pca", "projection", "autoencoder",
            "conv-autoencoder", "infogan"} <= set(trainable)
    assert [m["name"] for m in listing["methods"]] == trainable
    for method in listing["methods"]:
        cls = models.embedder_class(method["name"])
        names = [s["name"] for s in method["settings"]]
        assert len(names) == len(set(names)), method["name"]
        # every keyword the constructor takes (bar what training fills in) and every training
        # option of the method is listed
        accepted = set(inspect.signature(cls.__init__).parameters) - {
            "self", "classes", "mean", "std", "base_config", "cache_dir", "cnn_options"}
        assert accepted <= set(names), (method["name"], accepted - set(names))
        assert set(cls.training_options()) <= set(names)
        assert method["summary"] and "\n" not in method["summary"] and method["learns_from"]
    settings = {m["name"]: {s["name"]: s for s in m["settings"]} for m in listing["methods"]}
    for method in ("cnn", "cnn-hash"):
        activation = settings[method]["activation"]
        assert activation["default"] == "lrelu-softplus" and activation["group"] == "model"
        assert activation["choices"] == list(ACTIVATIONS)
    assert "lrelu-softplus" in ACTIVATIONS and "relu" in ACTIVATIONS
    infogan = settings["infogan"]
    assert infogan["categories"]["default"] == 10 and infogan["epochs"]["group"] == "training"
    assert infogan["monitor"]["default"] == "val_info_loss"  # the method's own run defaults
    assert settings["cnn"]["optimizer"]["choices"] == ["adam", "adamw", "sgd"]
    assert settings["projection"]["method"]["choices"] == ["linear", "lda"]
    assert settings["finetune"]["head_epochs"]["group"] == "training"
    assert "efficientnet-lite0" in listing["ready_made_embedders"]
    assert not set(listing["ready_made_embedders"]) & set(trainable)


def test_list_table_and_help_name_every_method() -> None:
    code, output = invoke("train", "--list")
    assert code == 0, output
    for name in _trainable():
        assert f"{name}: --option KEY=VALUE" in output, name
    assert "lrelu-softplus" in output and "val_info_loss" in output
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    help_text = " ".join(result.output.split())
    for name in _trainable():
        assert f"{name}:" in help_text, name
    assert "lrelu-softplus" in help_text and "train --list" in help_text
    code, output = invoke("train", "infogan", "--list", "--json")
    assert [m["name"] for m in json.loads(output)["methods"]] == ["infogan"]
    code, output = invoke("train", "pixels", "--list")
    assert code == 1 and "not a trainable method" in output
    code, output = invoke("train")
    assert code == 1 and "train --list" in output
