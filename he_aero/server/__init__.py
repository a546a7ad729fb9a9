"""The model owner's side: weights, a loaded execution plan and a public CKKS context (it cannot decrypt)."""
