"""--download against an HTTP server on 127.0.0.1 that the test starts and stops."""

import hashlib
import http.server
import io
import os
import tarfile
import threading

import pytest
from conftest import run_script, write_cifar

from v2.cli import app, flags, trainer
from v2.data import cifar as data
from v2.data import download
from v2.errors import UserError


def make_archive(folder, extra=None):
    """A cifar-10-binary.tar.gz of tiny files (plus an `extra` (name, bytes) member)."""
    files = write_cifar(folder / 'src')
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        for name in sorted(os.listdir(files)):
            tar.add(files / name, arcname='cifar-10-batches-bin/' + name)
        if extra:
            info = tarfile.TarInfo(extra[0])
            info.size = len(extra[1])
            tar.addfile(info, io.BytesIO(extra[1]))
    raw = buffer.getvalue()
    return raw, hashlib.md5(raw).hexdigest()


class Server:
    """Serves one archive at /archive.tar.gz; honours Range requests unless told not to."""

    def __init__(self, payload, ranges=True):
        self.payload, self.ranges, self.requests = payload, ranges, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.headers.get('Range'))
                start = 0
                if owner.ranges and self.headers.get('Range'):
                    start = int(self.headers['Range'].split('=')[1].split('-')[0])
                    self.send_response(206)
                else:
                    self.send_response(200)
                body = owner.payload[start:]
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return 'http://127.0.0.1:%d/archive.tar.gz' % self.httpd.server_port

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_download_checks_the_md5_and_extracts_into_the_folder(tmp_path):
    raw, md5 = make_archive(tmp_path)
    target = tmp_path / 'cifar'
    with Server(raw) as server:
        download.download('cifar10', str(target), server.url, md5, out=lambda s: None)
    assert sorted(os.listdir(target)) == sorted(data.CIFAR10.train_files + data.CIFAR10.test_files)
    images, labels = data.load_split(str(target), data.CIFAR10, 'train')
    assert images.shape[0] == 80
    lines = []
    download.download('cifar10', str(target), 'http://127.0.0.1:9/unused', md5, out=lines.append)
    assert 'nothing to download' in lines[0]


def test_a_wrong_checksum_is_refused_and_nothing_extracted(tmp_path):
    raw, _ = make_archive(tmp_path)
    target = tmp_path / 'cifar'
    with Server(raw) as server, pytest.raises(UserError, match='MD5 .* but the published one is '
                                                              '0123'):
        download.download('cifar10', str(target), server.url, '0123' + '0' * 28,
                          out=lambda s: None)
    assert os.listdir(target) == []


@pytest.mark.parametrize('name', ['../evil.bin', '/tmp/evil-absolute.bin',
                                  'cifar-10-batches-bin/../../evil.bin'])
def test_members_outside_the_folder_are_refused(tmp_path, name):
    raw, md5 = make_archive(tmp_path, extra=(name, b'gotcha'))
    target = tmp_path / 'cifar'
    with Server(raw) as server, pytest.raises(UserError, match='refusing member'):
        download.download('cifar10', str(target), server.url, md5, out=lambda s: None)
    assert not (tmp_path / 'evil.bin').exists() and not os.path.exists('/tmp/evil-absolute.bin')
    assert not [n for n in os.listdir(target) if n.endswith('.bin')]    # nothing extracted


@pytest.mark.parametrize('ranges', [True, False])
def test_an_interrupted_download_resumes_or_restarts(tmp_path, ranges):
    raw, md5 = make_archive(tmp_path)
    target = tmp_path / 'cifar'
    target.mkdir()
    (target / 'cifar-10-binary.tar.gz.part').write_bytes(raw[:len(raw) // 2])
    with Server(raw, ranges=ranges) as server:
        download.download('cifar10', str(target), server.url, md5, out=lambda s: None)
    assert server.requests == ['bytes=%d-' % (len(raw) // 2)]
    assert (target / 'test_batch.bin').exists()


def test_trainer_downloads_then_dry_runs(tmp_path, capsys):
    raw, md5 = make_archive(tmp_path)
    with Server(raw) as server:
        status, line = app.call(trainer.main, [
            'run_trainer.py', '--download', '--download_url=%s' % server.url,
            '--download_md5=%s' % md5, '--data_path=%s' % (tmp_path / 'cifar'),
            '--num_layers=8', '--batch_size=8', '--dry_run'], flags.TRAINER)
    assert status == 0, line
    captured = capsys.readouterr()
    assert 'extracted' in captured.out and 'input pipeline: 80 training images' in captured.out
    assert 'downloaded 100%' in captured.err


@pytest.mark.slow
def test_an_unreachable_server_is_one_line_to_run_again(tmp_path):
    run = run_script('run_trainer.py', '--download', '--download_url=http://127.0.0.1:9/x.tgz',
                     '--data_path=%s' % (tmp_path / 'cifar'), '--dry_run')
    assert run.returncode == 1 and 'Traceback' not in run.stderr
    assert '--download: http://127.0.0.1:9/x.tgz:' in run.stderr
    assert '(run again to resume)' in run.stderr
