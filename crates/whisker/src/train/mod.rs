//! Training on top of a backbone: the linear probe (L-BFGS logistic regression), metrics and
//! the trained-model file.

pub mod metrics;
pub mod model_file;
pub mod probe;
