//! Everything about ranks: the communicator and its backends.
