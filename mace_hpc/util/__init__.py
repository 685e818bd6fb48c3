"""Small helpers shared by every stage: atomic files, ids, locks."""
