//! Training on top of a backbone: the linear probe (L-BFGS logistic regression), metrics and
//! the trained-model file.

pub mod finetune;
pub mod head;
pub mod metrics;
pub mod model_file;
pub mod probe;
