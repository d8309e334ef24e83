"""The README and docs/ point only at files that exist, quote the results tables as the
experiments wrote them, and carry no unfinished text."""

import ast
import glob
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys

import pytest
import tomllib
from conftest import ROOT

PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
LINK = re.compile(r'\]\(([^)#\s]+)(?:#[^)]*)?\)')


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_image_exists(page):
    text = re.sub(r'`[^`]*`', '', page.read_text())           # code is not a link
    targets = [t for t in LINK.findall(text) if not re.match(r'[a-z]+:', t)]
    assert targets or page.name != 'README.md'
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, '%s links to missing files: %s' % (page.name, missing)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_no_placeholder_is_left(page):
    assert not re.search(r'[A-Z0-9_]+_PLACEHOLDER|TODO|XXX', page.read_text())


@pytest.mark.parametrize('page, written', [
    ('README.md', 'files/figure6.md'),
    ('docs/reproduction.md', 'files/figure6.md'),
    ('docs/reproduction.md', 'files/switches.md'),
    ('docs/reproduction.md', 'files/figure6_reference.md'),
    ('docs/reproduction.md', 'files/calibration.md'),
])
def test_the_results_tables_are_the_ones_the_experiments_wrote(page, written):
    rows = [line for line in (ROOT / written).read_text().splitlines() if line.startswith('|')]
    assert len(rows) >= 3
    text = (ROOT / page).read_text()
    stale = [row for row in rows if row not in text]
    assert not stale, '%s lacks rows of %s (copy its table again): %s' % (page, written, stale)


# --- every command the README, docs/ and the programs' docstrings give -----------------------

# The programs a command can name, by script, module or console name: (module, its own flags,
# as the flags module and the name of the tuple there).
PROGRAMS = {
    'run_trainer.py': ('v2.cli.trainer', 'v2.cli.flags.TRAINER'),
    'run_evaluator.py': ('v2.cli.evaluator', 'v2.cli.flags.EVALUATOR'),
    'v2.cli.convert': ('v2.cli.convert', 'v2.cli.flags.CONVERT'),
    'v2.tools.benchmark': ('v2.tools.benchmark', 'v2.tools.flags.BENCHMARK'),
    'v2.tools.step_variants': ('v2.tools.step_variants', 'v2.tools.flags.STEP_VARIANTS'),
    'v2.tools.experiments': ('v2.tools.experiments', 'v2.tools.flags.EXPERIMENTS'),
    'v2.tools.figures': ('v2.tools.figures', 'v2.tools.flags.FIGURES'),
    'v2.tools.curves': ('v2.tools.curves', 'v2.tools.flags.CURVES'),
    'v2.tools.gpu_report': ('v2.tools.gpu_report', 'v2.tools.flags.GPU_REPORT'),
    'v2.tools.catalog': ('v2.tools.catalog', 'v2.tools.flags.CATALOG'),
}
CONSOLE = {name: target.split(':')[0] for name, target in
           tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts'].items()}
# Tools that define their own flags when run (define_flags), parsed in flags of their own.
OWN_FLAGS = ('v2.tools.torch_resnet',)
# Processes our programs start, not users: their module must exist.
INTERNAL = ('v2.tools.gpu_worker',)
# Commands that are not ours, checked only for the files they name.
OTHERS = ('pip', 'mkdir', 'head', 'tar', 'tensorboard', 'saved_model_cli', 'nvidia-smi',
          '.ci/run', 'for')
REPO_FOLDERS = ('configs/', 'files/', 'docs/', 'tests/', 'v2/', 'notebooks/')
# Commands whose runs write into files/, which the repository keeps: their text says so.
WRITES_FILES = re.compile(r'--out=files\b|=files/|v2\.tools\.experiments (?!.*--out=)')
# Commands that train for long: their text says how long, on a named CPU.
TRAINS_LONG = re.compile(r'v2\.tools\.experiments (figure6|table|switches|calibration)\b')
DURATION = re.compile(r'\b(\d+ (minutes|hours)|an hour|\d+ h)\b.*AMD EPYC|AMD EPYC.*\b(\d+ '
                      r'(minutes|hours)|an hour)\b', re.DOTALL)


def _joined(lines):
    """Lines with their backslash continuations joined, and their trailing comments cut."""
    out, pending = [], ''
    for line in lines:
        line = (pending + ' ' + line.strip()).strip()
        if line.endswith('\\'):
            pending = line[:-1]
            continue
        pending = ''
        out.append(re.split(r'\s{2,}[#(]|\s+#\s', line)[0].strip())
    return out


def _markdown_commands(page):
    """(command, the text around it, whether it is a code block's) of every line of the code
    blocks (indented after a blank line, or fenced but not Python) and every inline `python
    ...` or console-command span."""
    text = page.read_text()
    found = []
    blocks = r'(?<=\n\n)(?:(?: {4}|\t)[^\n]*\n?)+|^```(?!python)[\s\S]*?^```'
    for block in re.finditer(blocks, text, re.M):
        lines = [line for line in block.group(0).splitlines() if not line.startswith('```')]
        context = text[max(0, block.start() - 400):block.end() + 700]
        found += [(c, context, True) for c in _joined(lines)]
    spans = r'(?<!`)`((?:python |%s)[^`]*)`(?!`)' % '|'.join(map(re.escape, CONSOLE))
    for span in re.finditer(spans, text):
        if span.group(1) in CONSOLE:
            continue                                    # a console command named, not run
        found.append((' '.join(span.group(1).split()),
                      text[max(0, span.start() - 300):span.end() + 300], False))
    return found


def _docstring_commands(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ''
    return [(c, doc, True) for c in _joined(doc.splitlines()) if c.startswith('python ')]


SOURCES = [ROOT / 'run_trainer.py', ROOT / 'run_evaluator.py',
           *sorted((ROOT / 'v2' / 'cli').glob('*.py')),
           *sorted((ROOT / 'v2' / 'tools').glob('*.py'))]
STARTS = re.compile(r'(\w+=\S+ )*(python |(%s)(\s|$))'
                    % '|'.join(map(re.escape, (*CONSOLE, *OTHERS))))
COMMANDS = [('%s: %s' % (page.name, command), command, context, block)
            for page in PAGES for command, context, block in _markdown_commands(page)
            if STARTS.match(command)]
COMMANDS += [('%s: %s' % (path.relative_to(ROOT), command), command, context, block)
             for path in SOURCES for command, context, block in _docstring_commands(path)]


def _program(words):
    """(program key, its argv) of a command's words, or (None, words) for someone else's."""
    while words and re.match(r'^[A-Z_]+=', words[0]):
        words = words[1:]                               # TF_CONFIG=... python ...
    if words[:2] == ['python', '-m'] and words[2] in PROGRAMS:
        return words[2], [words[2].rsplit('.', 1)[1] + '.py', *words[3:]]
    if words[0] == 'python' and words[1] in PROGRAMS:
        return words[1], words[1:]
    if words[0] in CONSOLE:
        key = next(k for k, (module, _) in PROGRAMS.items() if module == CONSOLE[words[0]])
        return key, words
    return None, words


def test_the_docs_give_commands_of_every_program():
    named = {_program(shlex.split(command))[0] for _, command, _, _ in COMMANDS}
    assert set(PROGRAMS) - {'v2.tools.step_variants'} <= named


@pytest.mark.parametrize('where, command, context, block', COMMANDS,
                         ids=[c[0] for c in COMMANDS])
def test_every_command_in_the_docs_parses_and_names_files_that_exist(where, command, context,
                                                                     block, monkeypatch):
    from v2.cli import app, flags
    monkeypatch.chdir(ROOT)                     # the docs' commands run from the checkout
    words = shlex.split(command)
    key, argv = _program(words)
    named = [w.split('=', 1)[-1] for w in words]
    missing = [p for p in named if p.startswith(REPO_FOLDERS) and not glob.glob(p)]
    assert not missing, 'names files that do not exist: %s' % missing
    if key is None:
        if words[:2] == ['python', '-m'] and words[2] in INTERNAL:
            assert importlib.util.find_spec(words[2])
        elif words[:2] == ['python', '-m'] and words[2] in OWN_FLAGS:
            from absl import flags as absl_flags
            own_flags = absl_flags.FlagValues()
            importlib.import_module(words[2]).define_flags(own_flags)
            try:
                assert not own_flags([words[2], *words[3:]])[1:], 'unexpected arguments'
            except absl_flags.Error as e:
                pytest.fail('does not parse: %s' % e)
        elif words[:3] == ['python', '-m', 'pytest']:
            assert all((ROOT / w).exists() for w in words[3:] if w.startswith('tests/'))
        else:
            assert words[0] in OTHERS, 'a command of no known program: %s' % command
        return
    module, own = PROGRAMS[key]
    main = importlib.import_module(module).main
    flags_module, group = own.rsplit('.', 1)
    own = getattr(importlib.import_module(flags_module), group)
    flags.FLAGS.unparse_flags()
    try:
        positional = app.parse(argv, own)[1:]
    except app.FlagsError as e:
        pytest.fail('does not parse: %s' % e)
    except SystemExit as e:                      # --help
        assert e.code == 0
        return
    finally:
        flags.FLAGS.unparse_flags()
    assert main                                  # the program exists and has a main
    if key == 'v2.tools.experiments':
        from v2.tools import experiments
        assert len(positional) == 1 and positional[0] in experiments.COMMANDS, positional
    elif key in ('v2.tools.curves', 'v2.tools.figures'):
        assert positional, 'names nothing to draw'
    elif key != 'v2.tools.gpu_report':
        assert not positional, 'unexpected arguments %s' % positional
    if WRITES_FILES.search(command) and '--help' not in command:
        assert re.search(r'overwrit', context, re.I), 'writes into files/ without saying so'
    if TRAINS_LONG.search(command) and block:
        assert DURATION.search(context), 'trains for long without saying how long, and where'


def test_the_data_step_of_figure6_runs_from_the_checkout(tmp_path):
    from conftest import write_cifar
    write_cifar(tmp_path / 'cifar-10-batches-bin', train_per_file=600, test_records=1100)
    steps = [c for w, c, _, _ in COMMANDS if w.startswith('reproduction.md')
             and c.startswith(('mkdir', 'head'))]
    assert len(steps) == 2
    for step in steps:
        subprocess.run(['bash', '-c', step], cwd=tmp_path, check=True)
    sizes = {p.name: p.stat().st_size for p in (tmp_path / 'D').iterdir()}
    assert sizes == {**{'data_batch_%d.bin' % i: 500 * 3073 for i in range(1, 6)},
                     'test_batch.bin': 1017 * 3073}


def test_the_usage_page_names_every_flag_of_the_two_programs():
    from v2.cli import flags
    section = (ROOT / 'docs' / 'usage.md').read_text().split('## Flags')[1]
    named = set(re.findall(r'`--(\w+)', section))
    assert set(flags.TRAINER) | set(flags.EVALUATOR) <= named


def _first_command_of_each_program():
    seen = {}
    for where, command, _, _ in COMMANDS:
        key, _ = _program(shlex.split(command))
        if key and key not in seen and '--help' not in command:
            seen[key] = (where, command)
    return sorted(seen.values())


@pytest.mark.slow
@pytest.mark.parametrize('where, command', _first_command_of_each_program(),
                         ids=[w for w, _ in _first_command_of_each_program()])
def test_the_first_command_of_each_program_passes_absls_only_check_args(where, command):
    words = [w for w in shlex.split(command) if not re.match(r'^[A-Z_]+=', w)]
    if words[0] in CONSOLE:                           # may not be installed: its entry point
        words = ['python', '-c', 'import %s as m; m.run()' % CONSOLE[words[0]], *words[1:]]
    run = subprocess.run([sys.executable, *words[1:], '--only_check_args'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
