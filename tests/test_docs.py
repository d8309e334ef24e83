"""The README and docs/ point only at files that exist, quote the results tables as the
experiments wrote them, and carry no unfinished text."""

import re

import pytest
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
