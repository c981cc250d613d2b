"""Close an account whose balance is zero."""
