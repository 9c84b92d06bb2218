"""The distributed layer: communicators and the data-parallel helpers.  It knows nothing of ops."""
