//! Miners and metric losses over the gathered global batch.
