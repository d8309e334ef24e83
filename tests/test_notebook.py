"""The notebook for Colab and Jupyter users, executed headless at toy size (slow tier)."""

import json

import pytest
from conftest import ROOT, write_cifar

NOTEBOOK = ROOT / 'notebooks' / 'cifar_resnet.ipynb'


def test_the_notebook_is_committed_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())['cells']
    assert all(not c.get('outputs') and not c.get('execution_count')
               for c in cells if c['cell_type'] == 'code')


@pytest.mark.slow
def test_the_notebook_runs_from_install_to_export(tmp_path, monkeypatch):
    """Every cell, in a fresh kernel, on tiny files instead of the download: it trains,
    draws the curves, evaluates with temperature scaling and exports."""
    nbformat = pytest.importorskip('nbformat', reason='the notebook test needs nbformat')
    nbclient = pytest.importorskip('nbclient', reason='the notebook test needs nbclient')
    pytest.importorskip('ipykernel', reason='the notebook test needs ipykernel')
    monkeypatch.setenv('CIFAR_NOTEBOOK_DATA', str(write_cifar(tmp_path / 'data')))
    monkeypatch.setenv('CIFAR_NOTEBOOK_WORK', str(tmp_path))
    monkeypatch.setenv('CIFAR_NOTEBOOK_STEPS', '4')
    monkeypatch.setenv('CIFAR_NOTEBOOK_DEPTH', '8')
    monkeypatch.setenv('CIFAR_NOTEBOOK_NO_INSTALL', '1')
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': str(NOTEBOOK.parent)}}).execute()
    for name in ('curves.png', 'reliability.png', 'evaluation.json', 'export/model_float32.tflite'):
        assert (tmp_path / name).exists(), name
    evaluation = json.loads((tmp_path / 'evaluation.json').read_text())
    assert [c['which'] for c in evaluation['checkpoints']] == ['last', 'best']
    printed = ''.join(o.get('text', '') for c in notebook.cells for o in c.get('outputs', []))
    assert 'no GPU: training on the CPU' in printed and 'step 4/4' in printed
    assert 'temperature scaling, fitted on the 16 validation images' in printed
    assert 'predicted [' in printed
