"""What the teacher produces once and every stage reuses: response sets (greedy or sampled) with
their cached top-k log-probabilities, and training prompts it writes itself."""
