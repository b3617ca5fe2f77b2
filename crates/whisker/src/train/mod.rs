//! Training on top of a backbone: the linear probe (L-BFGS logistic regression), metrics and
//! the trained-model file.

pub mod finetune;
pub mod head;
pub mod loss_scale;
pub mod metrics;
pub mod model_file;
pub mod optim;
pub mod probe;

/// Stop training when the model's outputs are no longer finite (a learning rate far too
/// high, broken inputs): an error that names the epoch, so the caller keeps its last good
/// checkpoint.
pub(crate) fn check_validation(logits: &[f32], epoch: usize) -> crate::Result<()> {
    if logits.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(crate::Error::NonFinite(format!(
            "training diverged: the validation logits became NaN or infinite after epoch {epoch} (learning rate too high?); the last checkpoint is kept"
        )))
    }
}

/// Stop training on a non-finite loss: see [`check_validation`].
pub(crate) fn check_loss(loss: f64, epoch: usize, step: usize) -> crate::Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(crate::Error::NonFinite(format!(
            "training diverged: the loss became {loss} at epoch {epoch}, step {step} (learning rate too high?); the last checkpoint is kept"
        )))
    }
}
