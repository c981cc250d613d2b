"""Example applications built on eventbus."""
