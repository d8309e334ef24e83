"""Training: recipe, schedule, optimizer, precision, devices, distribution, step, loop,
checkpoint, ema."""
