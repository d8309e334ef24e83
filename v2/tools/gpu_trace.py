"""How busy a GPU is, read from a profiler trace (TensorFlow's XSpace protobuf)."""

import glob
import os
import re


def busy_share(space) -> float | None:
    """Kernel time over wall time on the first GPU of a profiler XSpace, or None.

    The GPU's stream lines ('Stream #N...') hold one event per kernel or copy; the
    kernels' intervals (copies and memsets left out) are merged, so that kernels that
    overlap on several streams count once, and divided by the time from the first
    kernel's start to the last one's end.
    """
    planes = [p for p in space.planes if p.name.startswith('/device:GPU:')]
    if not planes:
        return None
    plane = sorted(planes, key=lambda p: p.name)[0]
    names = {i: m.name for i, m in plane.event_metadata.items()}
    intervals = []
    for line in plane.lines:
        if not line.name.startswith('Stream'):
            continue
        for event in line.events:
            if re.search('memcpy|memset', names.get(event.metadata_id, ''), re.IGNORECASE):
                continue
            start = line.timestamp_ns * 1000 + event.offset_ps
            intervals.append((start, start + event.duration_ps))
    if not intervals:
        return None
    intervals.sort()
    busy, (current_start, current_end) = 0, intervals[0]
    for start, end in intervals[1:]:
        if start > current_end:
            busy += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    busy += current_end - current_start
    return busy / (max(end for _, end in intervals) - intervals[0][0])


def read_trace(folder):
    """The XSpace of the newest trace under a profiler log folder."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    paths = sorted(glob.glob(os.path.join(folder, 'plugins', 'profile', '*', '*.xplane.pb')))
    if not paths:
        return None
    space = xplane_pb2.XSpace()
    with open(paths[-1], 'rb') as f:
        space.ParseFromString(f.read())
    return space
