"""The hardening search (`siuo search`) and its held-out proof: a layer between pipeline and interop, so it
may use every stage below (evaluate, checks, render, generate) and the model door."""
