"""Mechanics of a causal LM that every stage shares: decoder-block discovery, the one
hidden-state capture, forward passes over completion positions, generation, eval mode."""
