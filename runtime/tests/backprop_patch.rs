//! The vendored candle-core's one change (vendor/README.md): a node's first gradient is stored
//! as it is, not added to a tensor of zeros. These fail if the `[patch.crates-io]` entry or the
//! change is dropped (upstream stores a fresh sum), or if the change breaks accumulation or the
//! contiguity that upstream's sums always had.
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor, Var};
use std::sync::{Arc, Mutex};

/// Identity forward; its backward returns 3·grad (or, with `transpose`, grad's values through a
/// non-contiguous view) and remembers the tensor it returned.
struct Probe {
    returned: Arc<Mutex<Option<Tensor>>>,
    transpose: bool,
}

impl CustomOp1 for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let v: Vec<f32> =
            s.as_slice::<f32>()?[l.start_offset()..][..l.shape().elem_count()].to_vec();
        Ok((CpuStorage::F32(v), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = if self.transpose {
            // The same values through a non-contiguous view: a transposed copy, transposed back.
            grad.t()?.contiguous()?.t()?
        } else {
            (grad * 3.0)?
        };
        *self.returned.lock().unwrap() = Some(g.clone());
        Ok(Some(g))
    }
}

fn probe(transpose: bool) -> Probe {
    Probe {
        returned: Arc::new(Mutex::new(None)),
        transpose,
    }
}

#[test]
fn a_single_gradient_is_stored_as_the_op_returned_it() -> Result<()> {
    let x = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?)?;
    let y = x.as_tensor().apply_op1(probe(false))?;
    let w = Tensor::new(&[[1f32, -1.], [0.5, 2.]], &Device::Cpu)?;
    let grads = (y * &w)?.sum_all()?.backward()?;
    let g = grads.get(x.as_tensor()).expect("x has a gradient");
    assert_eq!(g.to_vec2::<f32>()?, vec![vec![3f32, -3.], vec![1.5, 6.]]);
    Ok(())
}

#[test]
fn the_first_gradient_is_the_same_tensor_not_a_sum_with_zeros() -> Result<()> {
    let x = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?)?;
    let op = probe(false);
    let returned = op.returned.clone();
    let y = x.as_tensor().apply_op1(op)?;
    let grads = y.sum_all()?.backward()?;
    let stored = grads.get(x.as_tensor()).expect("x has a gradient");
    let returned = returned.lock().unwrap().clone().expect("backward ran");
    // Upstream candle stores zeros + returned: a new tensor with another id.
    assert_eq!(stored.id(), returned.id());
    Ok(())
}

#[test]
fn a_non_contiguous_first_gradient_is_stored_contiguous_with_its_values() -> Result<()> {
    let x = Var::from_tensor(&Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu)?)?;
    let op = probe(true);
    let returned = op.returned.clone();
    let y = x.as_tensor().apply_op1(op)?;
    let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu)?;
    let grads = (y * &w)?.sum_all()?.backward()?;
    let returned = returned.lock().unwrap().clone().expect("backward ran");
    assert!(
        !returned.is_contiguous(),
        "the probe should return a strided view"
    );
    let stored = grads.get(x.as_tensor()).expect("x has a gradient");
    assert!(stored.is_contiguous());
    assert_eq!(stored.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
    Ok(())
}

#[test]
fn gradients_from_two_uses_are_summed() -> Result<()> {
    // x feeds the probe (gradient 3·w) and a product (gradient v): the sum must be 3w + v.
    let x = Var::from_tensor(&Tensor::new(&[0.5f32, -1., 2.], &Device::Cpu)?)?;
    let w = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?;
    let v = Tensor::new(&[10f32, 20., 30.], &Device::Cpu)?;
    let a = (x.as_tensor().apply_op1(probe(false))? * &w)?.sum_all()?;
    let b = (x.as_tensor() * &v)?.sum_all()?;
    let grads = (a + b)?.backward()?;
    let g = grads.get(x.as_tensor()).expect("x has a gradient");
    assert_eq!(g.to_vec1::<f32>()?, vec![13f32, 26., 39.]);
    Ok(())
}
