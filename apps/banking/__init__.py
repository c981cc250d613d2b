"""A bank built on eventbus: feature slices whose money is never created, lost or overdrawn."""
