//! Optimisers, learning-rate policies and weight averaging.
