"""The shape of the library's code, kept: short functions, arguments that cannot be swapped
silently, and layers that import downwards only.

A function over 80 lines, or one whose callers pass more than 7 values by position, is
where a reader loses the thread and a swapped argument goes unnoticed; the training loop's
train() reads as its docstring, in at most 45 lines. v2/cli is the programs' layer and
v2/tools the research tools built on it: nothing in v2/cli imports v2/tools.
"""

import ast
import importlib
import inspect
import pathlib

import pytest
from conftest import ROOT

LIBRARY = ('v2/training', 'v2/evaluation', 'v2/runtime')
MAX_LINES = 80
MAX_POSITIONAL = 7


def _sources(*folders):
    return sorted(path for folder in folders for path in (ROOT / folder).glob('*.py'))


def _module_name(path: pathlib.Path) -> str:
    return '.'.join(path.relative_to(ROOT).with_suffix('').parts)


def _functions(tree):
    return [node for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize('path', _sources(*LIBRARY), ids=_module_name)
def test_no_library_function_is_over_80_lines(path):
    long = ['%s (%d lines, line %d)' % (f.name, f.end_lineno - f.lineno + 1, f.lineno)
            for f in _functions(ast.parse(path.read_text()))
            if f.end_lineno - f.lineno + 1 > MAX_LINES]
    assert not long, long


def _required_positional(signature):
    return [p.name for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.default is p.empty and p.name not in ('self', 'cls')]


@pytest.mark.parametrize('path', _sources(*LIBRARY), ids=_module_name)
def test_no_library_function_or_constructor_takes_more_than_7_values_by_position(path):
    """Every function, method and class (its constructor, a dataclass's generated one
    included) defined in the module, as Python will call it."""
    module = importlib.import_module(_module_name(path))
    seen = []
    for name, thing in vars(module).items():
        if getattr(thing, '__module__', None) != module.__name__:
            continue                                            # imported, not defined here
        things = [(name, thing)]
        if inspect.isclass(thing):
            things += [('%s.%s' % (name, n), f) for n, f in vars(thing).items()
                       if inspect.isfunction(f) or isinstance(f, (classmethod, staticmethod))]
        for label, callable_ in things:
            callable_ = getattr(callable_, '__func__', callable_)
            try:
                signature = inspect.signature(callable_)
            except (TypeError, ValueError):
                continue
            required = _required_positional(signature)
            if len(required) > MAX_POSITIONAL:
                seen.append('%s(%s)' % (label, ', '.join(required)))
    assert not seen, seen


def test_train_reads_as_its_docstring_in_at_most_45_lines():
    tree = ast.parse((ROOT / 'v2/training/loop.py').read_text())
    train, = [f for f in _functions(tree) if f.name == 'train']
    assert train.end_lineno - train.lineno + 1 <= 45


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from ('%s.%s' % (node.module, alias.name) for alias in node.names)


def test_nothing_in_the_command_line_layer_imports_the_tools():
    upward = ['%s imports %s' % (path.relative_to(ROOT), name)
              for path in _sources('v2/cli') for name in _imports(path)
              if name == 'v2.tools' or name.startswith('v2.tools.')]
    assert not upward, upward


def test_the_library_imports_neither_the_command_line_nor_the_tools():
    folders = (*LIBRARY, 'v2/nets', 'v2/data')
    upward = ['%s imports %s' % (path.relative_to(ROOT), name)
              for path in _sources(*folders) for name in _imports(path)
              if name.split('.')[:2] in (['v2', 'cli'], ['v2', 'tools'])]
    assert not upward, upward
