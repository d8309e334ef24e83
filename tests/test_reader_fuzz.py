"""The binary reader on random and truncated bytes: what must be read is read, exactly;
everything else is refused in one line naming the file."""

import numpy as np

from v2.data import cifar
from v2.errors import UserError


def _expected(raw):
    """The oracle, from the format alone: (images, labels) for a valid file, else None."""
    if not raw or len(raw) % cifar.RECORD_BYTES:
        return None
    records = np.frombuffer(raw, np.uint8).reshape(-1, cifar.RECORD_BYTES)
    if (records[:, 0] > 9).any():
        return None
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0]


def test_random_and_truncated_files_are_read_exactly_when_valid(tmp_path):
    rng = np.random.default_rng(1234)
    good = rng.integers(0, 256, size=(4, cifar.RECORD_BYTES), dtype=np.uint8)
    good[:, 0] %= 10
    outcomes = {'read': 0, 'refused': 0}
    for case in range(180):
        kind = case % 3
        if kind == 0:                       # random length, random bytes
            raw = rng.integers(0, 256, size=int(rng.integers(0, 4 * cifar.RECORD_BYTES)),
                               dtype=np.uint8).tobytes()
        elif kind == 1:                     # whole records, labels 0-11 (some out of range)
            records = rng.integers(0, 256, size=(int(rng.integers(1, 4)), cifar.RECORD_BYTES),
                                   dtype=np.uint8)
            records[:, 0] %= 12
            raw = records.tobytes()
        else:                               # valid records, cut anywhere or at a record end
            cut = int(rng.integers(0, good.size + 1))
            if rng.random() < 0.5:
                cut -= cut % cifar.RECORD_BYTES
            raw = good.tobytes()[:cut]
        path = tmp_path / 'test_batch.bin'
        path.write_bytes(raw)
        expected = _expected(raw)
        try:
            images, labels = cifar.load_split(str(tmp_path), cifar.CIFAR10, 'test')
        except UserError as e:
            assert expected is None, 'a valid file of %d bytes was refused: %s' % (len(raw), e)
            message = str(e)
            assert '\n' not in message and message.startswith(str(path))
            outcomes['refused'] += 1
            continue
        assert expected is not None, 'an invalid file of %d bytes was read' % len(raw)
        np.testing.assert_array_equal(images.numpy(), expected[0])
        np.testing.assert_array_equal(labels.numpy(), expected[1])
        outcomes['read'] += 1
    assert outcomes['read'] > 25 and outcomes['refused'] > 60
