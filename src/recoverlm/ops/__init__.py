"""Pure maths on tensors and arrays (torch and numpy only): divergences, CKA, statistics."""
