"""CKKS building blocks on tenseal.sealapi: parameters, ciphertexts, packing, linear algebra, polynomials."""
