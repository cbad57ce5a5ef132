"""Free-software policies applied to models, from evidence the tool already holds.

`evidence` gathers facts (licences, inputs, store records, recompute cost) into a frozen
record; `debian`, `osaid`, `mof` and `guix` are pure functions of that record; `licenses`
parses SPDX expressions and knows which licences are free and who says so; `estimate`
extrapolates a short training run to the whole training.
"""
