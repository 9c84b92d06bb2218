"""The parallel layer: communicators (MPI or one process), agreement checks and fault handling.
It moves flat NumPy buffers and small Python objects; it knows nothing of graphs or ops."""
