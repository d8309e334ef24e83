"""Where a run computes and what it keeps, below both training and evaluation: the
devices, the precision per device, the distribution strategies, the checkpoint's
layout, the weight averages."""
