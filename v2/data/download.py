"""Fetch the official binary archive, check its MD5, extract it safely (--download).

The archive is downloaded to <data_path>/<archive>.part; an interrupted download
resumes from where it stopped (an HTTP Range request) or, if the server ignores
ranges, restarts. Only an archive whose MD5 matches the published one is kept
and extracted. Extraction strips the archive's top folder, so the files land in
data_path itself, and goes through tarfile's "data" filter, which refuses
members that would land outside the folder (absolute paths, "..", links out).
"""

import hashlib
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request

from v2.data import cifar
from v2.errors import UserError

# The official archives and their MD5 sums, as published on the CIFAR page.
SOURCES = {
    'cifar10': ('https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
                'c32a1d4ab5d03f1284b67883e8d87530'),
    'cifar100': ('https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz',
                 '03b5dce01913d631647c71ecec9e9cb8'),
}
CHUNK = 1 << 20


def md5_of(path):
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


class Progress:
    """A progress bar on a terminal; a line every 10% elsewhere (logs, CI)."""

    def __init__(self, total, already, stream=None):
        self.total, self.done, self.stream = total, already, stream or sys.stderr
        self.start, self.last_tenth = time.time(), -1
        self.started_at = already

    def update(self, count):
        self.done += count
        fraction = self.done / self.total if self.total else 0.0
        rate = (self.done - self.started_at) / max(time.time() - self.start, 1e-6) / 1e6
        text = '%3.0f%% %6.1f/%.1f MB %5.1f MB/s' % (100 * fraction, self.done / 1e6,
                                                      self.total / 1e6, rate)
        if self.stream.isatty():
            bar = '#' * int(30 * fraction)
            self.stream.write('\r[%-30s] %s' % (bar, text))
        elif int(10 * fraction) > self.last_tenth:
            self.last_tenth = int(10 * fraction)
            self.stream.write('downloaded %s\n' % text)
        self.stream.flush()

    def close(self):
        if self.stream.isatty():
            self.stream.write('\n')


def fetch(url, target, timeout=60):
    """Downloads url to target, resuming a target.part left by an interrupted run."""
    part = target + '.part'
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={'Range': 'bytes=%d-' % have} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and response.status == 206
            if have and not resumed:
                have = 0                                  # no ranges: start again
            length = int(response.headers.get('Content-Length') or 0)
            progress = Progress(have + length, have)
            with open(part, 'ab' if resumed else 'wb') as f:
                for block in iter(lambda: response.read(CHUNK), b''):
                    f.write(block)
                    progress.update(len(block))
            progress.close()
    except (urllib.error.URLError, OSError) as e:
        raise UserError('download: %s: %s (run again to resume)'
                        % (url, getattr(e, 'reason', None) or e), settings=('download',)) from None
    os.replace(part, target)


def extract(archive, folder):
    """Extracts the archive's files into folder, without its top-level directory."""
    def into_folder(member, path):
        # Judge the member by its own name first: stripping the top folder must not turn
        # "../x" into "x". The data filter strips a leading "/" instead of refusing it.
        try:
            if member.name.startswith('/') or os.path.isabs(member.name):
                raise tarfile.AbsolutePathError(member)
            tarfile.data_filter(member, path)
        except tarfile.FilterError as e:
            raise UserError('%s: refusing member %r: %s' % (archive, member.name, e)) from None
        name = member.name.split('/', 1)[1] if '/' in member.name else member.name
        if not name or member.isdir():
            return None
        return tarfile.data_filter(member.replace(name=name, deep=False), path)

    try:
        with tarfile.open(archive, 'r:gz') as tar:
            members = tar.getmembers()
            for member in members:                     # check all before writing any
                into_folder(member, folder)
            tar.extractall(folder, members=members, filter=into_folder)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError('%s: not a readable .tar.gz archive (%s)' % (archive, e)) from None


def download(dataset, data_path, url=None, md5=None, out=print):
    """Makes data_path hold the data set's binary files, downloading them if needed."""
    spec = cifar.spec_of(dataset, data_path)
    names = spec.train_files + spec.test_files
    if all(os.path.exists(os.path.join(data_path, n)) for n in names):
        out('download: %s already holds %s; nothing to download'
            % (data_path, spec.archive or 'its files'))
        return
    if spec.name == cifar.OWN:
        raise UserError('data_path=%s holds your own images (its %s), which cannot be '
                        'downloaded, and lacks some of %s; convert them again'
                        % (data_path, cifar.LABEL_NAMES, ', '.join(names)),
                        settings=('data_path', 'download'))
    default_url, default_md5 = SOURCES['cifar100' if dataset.startswith('cifar100') else dataset]
    url, md5 = url or default_url, md5 or default_md5
    if os.path.exists(data_path) and not os.path.isdir(data_path):
        raise UserError('data_path=%s is a file; it must be a folder' % data_path,
                        settings=('data_path',))
    os.makedirs(data_path, exist_ok=True)
    archive = os.path.join(data_path, spec.archive)
    if not os.path.exists(archive):
        out('download: fetching %s into %s' % (url, data_path))
        fetch(url, archive)
    got = md5_of(archive)
    if got != md5:
        os.remove(archive)
        raise UserError('%s: MD5 %s, but the published one is %s; the download was removed, '
                        'run again' % (archive, got, md5))
    extract(archive, data_path)
    os.remove(archive)
    out('download: extracted %s into %s' % (', '.join(names), data_path))
