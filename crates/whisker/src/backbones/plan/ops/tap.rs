//! A named feature map offered to the caller's taps (`featuremap`, Grad-CAM), and the
//! place whose gradient `Plan::value_grad` can stop at.

use burn::tensor::{Tensor, TensorData};
use whisker_kernels as k;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::{shape_err, V};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct Tap {
    pub name: String,
    pub x: V,
    /// A layer of tokens `(t, 1, c)` whose last `gh·gw` are the patches of the grid of
    /// value `grid` (`(gh, gw, _)`, the patch embeddings): offered as a map on that grid.
    pub grid: Option<V>,
}

impl Step for Tap {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        None
    }

    fn out_hw(&self, _: usize, _: Shapes<'_>) -> Result<(usize, usize)> {
        Err(Error::Internal("a tap has no output".into()))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        if !cx.taps.wants(&self.name) {
            cx.taps.note(&self.name);
            return Ok(());
        }
        if let Some(g) = self.grid {
            let (n, (t, _, c), (gh, gw, _)) = (cx.n, cx.shapes[self.x], cx.shapes[g]);
            let x = cx.value(self.x);
            let prefix = t.saturating_sub(gh * gw);
            let mut patches = Vec::with_capacity(n * gh * gw * c);
            for img in x.chunks_exact(t * c) {
                patches.extend_from_slice(&img[prefix * c..]);
            }
            let mut nchw = vec![0f32; patches.len()];
            k::nhwc_to_nchw(&patches, n, gh, gw, c, &mut nchw).map_err(shape_err)?;
            let map = Tensor::<4>::from_data(TensorData::new(nchw, [n, c, gh, gw]), cx.device);
            let tokens = Tensor::<3>::from_data(TensorData::new(x.to_vec(), [n, t, c]), cx.device);
            cx.taps.tap_tokens(&self.name, &map, tokens);
            return Ok(());
        }
        let (n, (h, w, c)) = (cx.n, cx.shapes[self.x]);
        let mut nchw = vec![0f32; cx.len(self.x)];
        k::nhwc_to_nchw(cx.value(self.x), n, h, w, c, &mut nchw).map_err(shape_err)?;
        let t = Tensor::<4>::from_data(TensorData::new(nchw, [n, c, h, w]), cx.device);
        cx.taps.tap(&self.name, &t);
        Ok(())
    }

    fn backward(&self, _: &mut Bwd<'_>) -> Result<()> {
        Ok(())
    }

    fn describe(&self, _: Shapes<'_>) -> String {
        format!("tap {}", self.name)
    }
}
