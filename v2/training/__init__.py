"""Training: recipe, schedule, optimizer, the traced step, the training state, the checks
before the first step, the loop's actions, the loop."""
