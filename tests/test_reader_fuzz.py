"""The binary reader on random and truncated bytes: valid records or the one clear error."""

import numpy as np

from v2 import data
from v2.errors import UserError


def test_random_and_truncated_files_read_or_fail_in_one_line(tmp_path):
    rng = np.random.default_rng(1234)
    good = rng.integers(0, 256, size=(4, data.RECORD_BYTES), dtype=np.uint8)
    good[:, 0] %= 10
    outcomes = {'read': 0, 'refused': 0}
    for case in range(1500):
        kind = case % 3
        if kind == 0:                       # random length, random bytes
            raw = rng.integers(0, 256, size=int(rng.integers(0, 4 * data.RECORD_BYTES)),
                               dtype=np.uint8).tobytes()
        elif kind == 1:                     # whole records, labels 0-11 (some out of range)
            records = rng.integers(0, 256, size=(int(rng.integers(1, 4)), data.RECORD_BYTES),
                                   dtype=np.uint8)
            records[:, 0] %= 12
            raw = records.tobytes()
        else:                               # valid records, cut anywhere or at a record end
            cut = int(rng.integers(0, good.size + 1))
            if rng.random() < 0.5:
                cut -= cut % data.RECORD_BYTES
            raw = good.tobytes()[:cut]
        path = tmp_path / 'test_batch.bin'
        path.write_bytes(raw)
        try:
            images, labels = data.load_split(str(tmp_path), data.CIFAR10, 'test')
        except UserError as e:
            message = str(e)
            assert '\n' not in message and message.startswith(str(path))
            outcomes['refused'] += 1
            continue
        assert len(raw) % data.RECORD_BYTES == 0 and raw
        assert images.shape[0] == labels.shape[0] == len(raw) // data.RECORD_BYTES
        assert int(np.max(labels)) < 10
        outcomes['read'] += 1
    assert outcomes['read'] > 50 and outcomes['refused'] > 500
