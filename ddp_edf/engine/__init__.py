"""The engine of the lecture: computation graph, ops, gradient check, models and optimizers.
It knows nothing of MPI, files or data sets: a graph runs on whatever arrays its Inputs hold."""
