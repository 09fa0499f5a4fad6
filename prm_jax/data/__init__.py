"""Readers (PRM800K, MATH, scored samples), the toy domain, and the input pipeline."""
