"""`recoverlm inspect` on the folders of every degradation: what each is and what recover keeps."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from recoverlm.cli import app
from recoverlm.degrade import degrade
from recoverlm.runs import SIDE_DIR

runner = CliRunner()
CASES = [("prune.magnitude", {"sparsity": 0.5}, "sparsity", "50.0% sparse"),
         ("prune.wanda", {"sparsity": 0.5}, "sparsity", "50.0% sparse"),
         ("prune.nm", {"n": 2, "m": 4}, "sparsity", "2:4"),
         ("quant.gptq", {"bits": 4, "group_size": 32}, "quant_grid", "4-bit asymmetric grid, groups of 32"),
         ("prune.depth", {"n_blocks": 1}, "none", "every weight trains freely"),
         ("quant.rtn", {"bits": 4, "group_size": 32}, "quant_grid", "4-bit asymmetric grid, groups of 32"),
         ("quant.nf4", {"blocksize": 32}, "nf4", "NF4 grid, blocks of 32"),
         ("prune.ffn", {"fraction": 0.25}, "none", "every weight trains freely"),
         ("sft", {"steps": 1, "n_train": 4, "batch_size": 2}, "none", "every weight trains freely")]


@pytest.mark.parametrize("method,params,kind,keeps", CASES)
def test_inspect_says_what_recover_keeps(tmp_path, tiny_model, method, params, kind, keeps):
    degrade(tiny_model, method, params, tmp_path / "m")
    text = runner.invoke(app, ["inspect", str(tmp_path / "m")])
    assert text.exit_code == 0, text.output
    assert "recover keeps" in text.output and keeps in text.output
    info = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "m"), "--json"]).output)
    assert info["constraint"]["kind"] == kind and info["parameters"] > 0 and info["layers"] == (1 if method == "prune.depth" else 2)


def test_inspect_infers_a_foreign_sparse_folder_and_a_dense_one(tmp_path, tiny_model):
    degrade(tiny_model, "prune.nm", {"n": 2, "m": 4}, tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / SIDE_DIR)
    info = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "m"), "--json"]).output)
    assert info["constraint"]["source"] == "inferred from exact zeros" and info["constraint"]["pattern"] == "2:4"
    dense = runner.invoke(app, ["inspect", str(tiny_model)])
    assert dense.exit_code == 0 and "trained dense" in dense.output


def test_inspect_a_missing_folder_is_one_line(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
