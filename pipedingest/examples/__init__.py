"""Code that belongs to the shipped example configurations (conf/examples/)."""
