"""``distill mix``: filtered outputs -> one shuffled, deduplicated, split, published corpus."""
