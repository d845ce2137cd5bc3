//! Models: a trunk returning the last feature map, and heads producing embeddings.
pub mod resnet;
pub mod weights;
