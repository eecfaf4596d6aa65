//! Exact kernels on constants: transpose, slice, concat, split. They work on the raw bytes of
//! any dtype of at least 8 bits per element, so they never change a value.

use bytes::Bytes;

use crate::ir::{num_elements, Tensor, TensorData};

/// Why a kernel could not run (reported as the reason a match did not fire).
pub type KernelError = String;

fn elem_size(t: &Tensor) -> Result<usize, KernelError> {
    match t.dtype.bits() {
        Some(b) if b >= 8 => Ok(b / 8),
        _ => Err(format!(
            "{} constants are not supported by this kernel",
            t.dtype
        )),
    }
}

fn raw(t: &Tensor) -> Result<&Bytes, KernelError> {
    match &t.data {
        TensorData::Raw(b) => Ok(b),
        TensorData::Strings(_) => Err("string constants are not supported by this kernel".into()),
    }
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

fn udims(t: &Tensor) -> Result<Vec<usize>, KernelError> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dim {d}")))
        .collect()
}

fn normalize_axis(axis: i64, rank: usize) -> Result<usize, KernelError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r.max(1)).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

fn derived(t: &Tensor, dims: Vec<i64>, data: Vec<u8>) -> Tensor {
    Tensor::from_raw(t.dtype, dims, Bytes::from(data))
}

/// `Transpose` with `perm` (default: reversed axes).
pub fn transpose(t: &Tensor, perm: Option<&[i64]>) -> Result<Tensor, KernelError> {
    let es = elem_size(t)?;
    let b = raw(t)?;
    let dims = udims(t)?;
    let rank = dims.len();
    let perm: Vec<usize> = match perm {
        None => (0..rank).rev().collect(),
        Some(p) => {
            if p.len() != rank {
                return Err(format!("perm {p:?} does not fit rank {rank}"));
            }
            let p: Vec<usize> = p
                .iter()
                .map(|&a| normalize_axis(a, rank))
                .collect::<Result<_, _>>()?;
            let mut seen = vec![false; rank];
            for &a in &p {
                if std::mem::replace(&mut seen[a], true) {
                    return Err(format!("perm {p:?} repeats axis {a}"));
                }
            }
            p
        }
    };
    let out_dims: Vec<usize> = perm.iter().map(|&a| dims[a]).collect();
    let in_strides = strides(&dims);
    let n = dims.iter().product::<usize>();
    let mut out = vec![0u8; n * es];
    if rank == 2 && perm == [1, 0] {
        // Blocked 2-D transpose: the common case (weights), cache friendly.
        let (r, c) = (dims[0], dims[1]);
        const BS: usize = 32;
        for i0 in (0..r).step_by(BS) {
            for j0 in (0..c).step_by(BS) {
                for i in i0..(i0 + BS).min(r) {
                    for j in j0..(j0 + BS).min(c) {
                        let src = (i * c + j) * es;
                        let dst = (j * r + i) * es;
                        out[dst..dst + es].copy_from_slice(&b[src..src + es]);
                    }
                }
            }
        }
    } else {
        let out_strides = strides(&out_dims);
        for (o, chunk) in out.chunks_exact_mut(es).enumerate() {
            let mut src = 0;
            for (k, &a) in perm.iter().enumerate() {
                let idx = (o / out_strides[k]) % out_dims[k].max(1);
                src += idx * in_strides[a];
            }
            chunk.copy_from_slice(&b[src * es..src * es + es]);
        }
    }
    Ok(derived(
        t,
        out_dims.iter().map(|&d| d as i64).collect(),
        out,
    ))
}

/// `Slice` with ONNX semantics (negative indices, clamping, negative steps).
pub fn slice(
    t: &Tensor,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Tensor, KernelError> {
    let es = elem_size(t)?;
    let b = raw(t)?;
    let dims = udims(t)?;
    let rank = dims.len();
    if starts.len() != ends.len() {
        return Err("starts and ends differ in length".into());
    }
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&x| normalize_axis(x, rank))
            .collect::<Result<_, _>>()?,
        None => (0..starts.len()).collect(),
    };
    if axes.len() != starts.len() {
        return Err("axes and starts differ in length".into());
    }
    let mut begin = vec![0i64; rank];
    let mut step = vec![1i64; rank];
    let mut count: Vec<usize> = dims.clone();
    for (k, &a) in axes.iter().enumerate() {
        let d = dims[a] as i64;
        let s = steps.map_or(1, |s| s.get(k).copied().unwrap_or(1));
        if s == 0 {
            return Err("slice step 0".into());
        }
        let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
        let mut st = if starts[k] < 0 {
            starts[k] + d
        } else {
            starts[k]
        };
        let mut en = if ends[k] < 0 {
            ends[k].saturating_add(d)
        } else {
            ends[k]
        };
        if s > 0 {
            st = clamp(st, 0, d);
            en = clamp(en, 0, d);
        } else {
            st = clamp(st, -1, d - 1);
            en = clamp(en, -1, d - 1);
        }
        let n = if s > 0 {
            (en - st + s - 1).div_euclid(s).max(0)
        } else {
            (st - en + (-s) - 1).div_euclid(-s).max(0)
        };
        begin[a] = st;
        step[a] = s;
        count[a] = n as usize;
    }
    let in_strides = strides(&dims);
    let out_strides = strides(&count);
    let n: usize = count.iter().product();
    let mut out = vec![0u8; n * es];
    for (o, chunk) in out.chunks_exact_mut(es).enumerate() {
        let mut src = 0i64;
        for k in 0..rank {
            let idx = ((o / out_strides[k]) % count[k].max(1)) as i64;
            src += (begin[k] + idx * step[k]) * in_strides[k] as i64;
        }
        let src = src as usize * es;
        chunk.copy_from_slice(&b[src..src + es]);
    }
    Ok(derived(t, count.iter().map(|&d| d as i64).collect(), out))
}

/// `Concat` along `axis`.
pub fn concat(ts: &[&Tensor], axis: i64) -> Result<Tensor, KernelError> {
    let first = ts.first().ok_or("concat of nothing")?;
    let es = elem_size(first)?;
    let rank = first.dims.len();
    let a = normalize_axis(axis, rank)?;
    for t in ts {
        if t.dtype != first.dtype || t.dims.len() != rank {
            return Err("concat operands differ in dtype or rank".into());
        }
        for k in 0..rank {
            if k != a && t.dims[k] != first.dims[k] {
                return Err(format!("concat operands differ in dim {k}"));
            }
        }
    }
    let outer: usize = first.dims[..a].iter().map(|&d| d as usize).product();
    let inner: usize = first.dims[a + 1..]
        .iter()
        .map(|&d| d as usize)
        .product::<usize>()
        * es;
    let mut out = Vec::new();
    for o in 0..outer {
        for t in ts {
            let block = t.dims[a] as usize * inner;
            out.extend_from_slice(&raw(t)?[o * block..(o + 1) * block]);
        }
    }
    let mut dims = first.dims.clone();
    dims[a] = ts.iter().map(|t| t.dims[a]).sum();
    Ok(derived(first, dims, out))
}

/// `Split` along `axis` into `sizes` (or `n` equal parts, the last one smaller if needed,
/// as ONNX opset 18 defines).
pub fn split(
    t: &Tensor,
    axis: i64,
    sizes: Option<&[i64]>,
    n: usize,
) -> Result<Vec<Tensor>, KernelError> {
    let dims = &t.dims;
    let a = normalize_axis(axis, dims.len())?;
    let d = dims[a];
    let sizes: Vec<i64> = match sizes {
        Some(s) => {
            if s.iter().sum::<i64>() != d || s.iter().any(|&x| x < 0) {
                return Err(format!("split sizes {s:?} do not add up to {d}"));
            }
            s.to_vec()
        }
        None => {
            if n == 0 {
                return Err("split into 0 parts".into());
            }
            let chunk = (d + n as i64 - 1) / n as i64;
            (0..n as i64)
                .map(|i| (d - i * chunk).clamp(0, chunk))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for s in sizes {
        let mut starts = vec![0i64; dims.len()];
        let mut ends = dims.clone();
        starts[a] = start;
        ends[a] = start + s;
        out.push(slice(t, &starts, &ends, None, None)?);
        start += s;
    }
    Ok(out)
}

/// The element count a tensor of `dims` holds (for kernels' result types).
pub fn count(dims: &[i64]) -> usize {
    num_elements(dims).unwrap_or(0)
}

/// `Gather` of a constant with constant `indices` along `axis` (negative indices count from the
/// end): the selected slices, in the order given.
pub fn take(t: &Tensor, indices: &[i64], axis: i64) -> Result<Tensor, KernelError> {
    let es = elem_size(t)?;
    let b = raw(t)?;
    let dims = udims(t)?;
    let a = normalize_axis(axis, dims.len())?;
    if dims.is_empty() {
        return Err("take needs a tensor of rank at least 1".into());
    }
    let n = dims[a];
    let idx: Vec<usize> = indices
        .iter()
        .map(|&i| {
            let k = if i < 0 { i + n as i64 } else { i };
            usize::try_from(k)
                .ok()
                .filter(|&k| k < n)
                .ok_or_else(|| format!("index {i} is out of range for dimension {n}"))
        })
        .collect::<Result<_, _>>()?;
    let outer: usize = dims[..a].iter().product();
    let inner: usize = dims[a + 1..].iter().product::<usize>() * es;
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &k in &idx {
            let src = (o * n + k) * inner;
            out.extend_from_slice(&b[src..src + inner]);
        }
    }
    let mut out_dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    out_dims[a] = idx.len() as i64;
    Ok(derived(t, out_dims, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dims: &[i64], v: &[f32]) -> Tensor {
        Tensor::from_f32(dims.to_vec(), v)
    }
    fn vals(t: &Tensor) -> Vec<f32> {
        t.as_f32().unwrap().into_owned()
    }

    #[test]
    fn transpose_2d_and_3d() {
        let a = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = transpose(&a, None).unwrap();
        assert_eq!(b.dims, vec![3, 2]);
        assert_eq!(vals(&b), vec![1., 4., 2., 5., 3., 6.]);
        let c = t(&[2, 1, 3], &[1., 2., 3., 4., 5., 6.]);
        let d = transpose(&c, Some(&[2, 0, 1])).unwrap();
        assert_eq!(d.dims, vec![3, 2, 1]);
        assert_eq!(vals(&d), vec![1., 4., 2., 5., 3., 6.]);
        assert!(transpose(&c, Some(&[0, 0, 1])).is_err());
        // A big one exercises the blocked path against the generic formula.
        let n: Vec<f32> = (0..70 * 45).map(|i| i as f32).collect();
        let big = t(&[70, 45], &n);
        let tb = transpose(&big, Some(&[1, 0])).unwrap();
        let v = vals(&tb);
        for i in 0..70 {
            for j in 0..45 {
                assert_eq!(v[j * 70 + i], n[i * 45 + j]);
            }
        }
    }

    #[test]
    fn slice_like_onnx() {
        let a = t(&[2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        let s = slice(&a, &[0, 1], &[2, 3], None, None).unwrap();
        assert_eq!(
            (s.dims.clone(), vals(&s)),
            (vec![2, 2], vec![2., 3., 6., 7.])
        );
        let s = slice(&a, &[-1], &[i64::MAX], Some(&[1]), None).unwrap();
        assert_eq!(vals(&s), vec![4., 8.]);
        let s = slice(&a, &[-1], &[i64::MIN], Some(&[1]), Some(&[-2])).unwrap();
        assert_eq!(vals(&s), vec![4., 2., 8., 6.]);
    }

    #[test]
    fn concat_and_split_are_inverse() {
        let a = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let parts = split(&a, 1, Some(&[1, 2]), 2).unwrap();
        assert_eq!(vals(&parts[0]), vec![1., 4.]);
        assert_eq!(vals(&parts[1]), vec![2., 3., 5., 6.]);
        let back = concat(&[&parts[0], &parts[1]], -1).unwrap();
        assert!(back.same_content(&a));
        let eq = split(&t(&[5], &[1., 2., 3., 4., 5.]), 0, None, 2).unwrap();
        assert_eq!(
            (vals(&eq[0]), vals(&eq[1])),
            (vec![1., 2., 3.], vec![4., 5.])
        );
    }

    #[test]
    fn take_along_axes() {
        let a = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let c = take(&a, &[2, 0], 1).unwrap();
        assert_eq!(c.dims, vec![2, 2]);
        assert_eq!(vals(&c), vec![3., 1., 6., 4.]);
        let r = take(&a, &[-1], 0).unwrap();
        assert_eq!(vals(&r), vec![4., 5., 6.]);
        assert!(take(&a, &[3], 1).is_err());
        assert!(take(&a, &[0], 2).is_err());
    }
}
