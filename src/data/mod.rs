//! Datasets: the memory-mapped file format, generated and prepared datasets, the
//! distributed N×K sampler and the threaded loader.
pub mod augment;
pub mod color;
pub mod format;
pub mod loader;
pub mod prepare;
pub mod sampler;
pub mod synth;

pub use format::{Dataset, DatasetWriter, ImageRef, Metadata};
