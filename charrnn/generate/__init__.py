"""Writing text: the one-step stepper, token choice, stop strings and the sampler."""
