"""The feature slices of the bank, one folder each: types, a pure core, and an I/O shell."""
