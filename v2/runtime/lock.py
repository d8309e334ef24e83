"""One writer per run folder: a lock file held by the trainer for the whole run.

Two trainers started on one --ckpt_path (a second terminal, a scheduler's retry, a
notebook cell run again) would both save there, and the folder would end up with
the checkpoints, metrics.csv rows and TensorBoard files of two runs interleaved. The
first trainer takes <folder>/trainer.lock; a second one is refused, naming the holder
(its process id, host and start time, written in the file).

The lock is an flock(2) on that file: the kernel drops it when its holder dies,
however it dies, so the lock of a SIGKILLed run is free again and the next run takes
it over (saying so). On a folder shared over NFS, Linux maps flock onto the server's
locks, so a trainer on another machine is refused too. Where the file system has no
locks at all, the file's contents decide: a process on this host that no longer runs
frees it; one on another host cannot be checked from here, and the refusal says how
to free it by hand.
"""

import errno
import fcntl
import os
import socket
import time

from v2.errors import UserError

FILE = 'trainer.lock'


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # alive, another user's
        return True
    return True


def _parse(text):
    """{'pid', 'host', 'since'} from a lock file's contents (empty where it is blank)."""
    fields = dict(part.split('=', 1) for part in text.split() if '=' in part)
    try:
        fields['pid'] = int(fields['pid'])
    except (KeyError, ValueError):
        return {}
    return fields


def describe(holder):
    """'pid 123 on host a, since 2026-12-04T19:00:00Z' (or 'a process starting up')."""
    if not holder:
        return 'a process starting up'
    return 'pid %d on host %s%s' % (holder['pid'], holder.get('host', '?'),
                                    ', since %s' % holder['since']
                                    if holder.get('since') else '')


class RunLock:
    """The lock of one run folder; acquire() takes it or refuses, release() frees it.

    A context manager: `with RunLock(folder, 'ckpt_path', out):` holds it for the block,
    released on any exception and on Ctrl-C.
    """

    def __init__(self, folder, setting='ckpt_path', out=print):
        self.folder, self.setting, self.out = folder, setting, out
        self.path = os.path.join(folder, FILE)
        self.fd = None

    def _read(self, fd):
        os.lseek(fd, 0, os.SEEK_SET)
        return _parse(os.read(fd, 4096).decode(errors='replace'))

    def _refuse(self, holder, why=''):
        raise UserError('%s=%s is in use by another trainer (%s%s); two trainers in one folder '
                        'would mix their checkpoints and logs: wait for it to end, stop it, or '
                        'train into another folder'
                        % (self.setting, self.folder, describe(holder), why),
                        settings=(self.setting,))

    def _refuse_unwritable(self):
        """The lock file is another user's: busy if its flock is held, else left behind."""
        holder, busy = {}, False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            try:
                holder = self._read(fd)
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = True
            except OSError:
                pass
            finally:
                os.close(fd)
        if busy:
            self._refuse(holder)
        raise UserError('%s=%s: its lock %s, left by %s, cannot be written by this user; delete '
                        'it if that run has ended' % (self.setting, self.folder, self.path,
                                                      describe(holder)),
                        settings=(self.setting,))

    def acquire(self):
        """Takes the lock, or raises UserError naming its holder; returns self."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except PermissionError:
                self._refuse_unwritable()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = self._read(fd)
                    os.close(fd)
                    self._refuse(holder)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                locked = False                          # no locks here: the contents decide
            # A holder deletes the file as it releases it: a lock taken on the deleted file
            # would be no lock at all, so take it again on the one now there.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self._read(fd)
        if previous and previous['pid'] != os.getpid():
            here = previous.get('host') == socket.gethostname()
            if not locked and (not here or _pid_alive(previous['pid'])):
                os.close(fd)
                self._refuse(previous, '' if here else
                             '; this file system has no locks, so a trainer on another machine '
                             'cannot be checked from here: if it no longer runs, delete %s'
                             % self.path)
            self.out('note: took over %s from %s, which ended without releasing it (killed, '
                     'or its machine went down)' % (self.path, describe(previous)))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, ('pid=%d host=%s since=%s\n'
                      % (os.getpid(), socket.gethostname(),
                         time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self):
        """Deletes the file and frees the lock (in that order: see acquire)."""
        if self.fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)                 # closing drops the flock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
