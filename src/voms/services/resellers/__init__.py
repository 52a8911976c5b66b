"""Resellers and electronic PIN sales (issue 21), in execution order: accounts (the
tree, credit, commission, payments), stock (serial ranges and their cursors), sales
(electronic PINs), statements (settlement and sell-through)."""
