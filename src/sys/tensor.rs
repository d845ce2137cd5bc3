//! A CPU tensor's elements as a slice, so that MPI reads and writes tensor memory
//! without host copies.

/// The elements of `t` as a slice when `t` is a defined, contiguous CPU tensor of kind
/// `T`; `None` otherwise (the caller copies instead).
///
/// ```
/// let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
/// assert_eq!(dml::sys::cpu_data::<f32>(&t), Some(&[1.0f32, 2.0, 3.0][..]));
/// assert_eq!(dml::sys::cpu_data::<f64>(&t), None); // another kind
/// ```
pub fn cpu_data<T: tch::kind::Element>(t: &tch::Tensor) -> Option<&[T]> {
    if !is_plain_cpu::<T>(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&[]);
    }
    // SAFETY: `t` is a defined, contiguous CPU tensor of `n` elements of kind `T`, so its
    // data pointer addresses `n` initialised, aligned `T`s; they live while `t` is
    // borrowed. Writers through other views of the same storage must not run meanwhile:
    // dml holds such a slice only across one collective call.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr().cast::<T>(), n) })
}

/// [`cpu_data`], writable.
///
/// ```
/// let mut t = tch::Tensor::from_slice(&[1i64, 2]);
/// dml::sys::cpu_data_mut::<i64>(&mut t).unwrap()[1] = 5;
/// assert_eq!(Vec::<i64>::try_from(&t).unwrap(), vec![1, 5]);
/// ```
pub fn cpu_data_mut<T: tch::kind::Element>(t: &mut tch::Tensor) -> Option<&mut [T]> {
    if !is_plain_cpu::<T>(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&mut []);
    }
    // SAFETY: as in `cpu_data`; the exclusive borrow of `t` stands for exclusive use of
    // its storage during the slice's life (see there).
    Some(unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<T>(), n) })
}

fn is_plain_cpu<T: tch::kind::Element>(t: &tch::Tensor) -> bool {
    t.defined() && t.device() == tch::Device::Cpu && t.kind() == T::KIND && t.is_contiguous()
}
