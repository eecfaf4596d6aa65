//! Pruning kernels and honest storage of sparse constants.
//!
//! - [`mask`]: magnitude masks (unstructured, N:M along K, rows, columns) with the note the
//!   report shows: sparsity achieved, ‖W − Wm‖/‖W‖, and the parameters the file will store.
//! - [`neurons`]: which hidden neurons of an MLP block to keep, by ‖up col‖·‖down row‖.
//! - [`pack_sparse`]: stores mostly-zero float constants as ONNX `sparse_initializer`s (COO,
//!   linear int64 indices) where that is smaller than dense; [`sparse_saving`] is the rule, so
//!   a mask's note predicts exactly what packing will do.
//!
//! Zeros stored densely save nothing: a 2:4 or 50 % mask stays dense (12 bytes per kept f32 in
//! COO > 4 bytes per element dense) and its note says `params_after = params_before`.

use crate::compute::{Backend, MaskPattern, MatrixRef};
use crate::ir::{DType, Graph, SparseTensor, Tensor, ValueDef};

use super::eval::Note;

/// Bytes of one COO index (ONNX requires int64 indices).
const INDEX_BYTES: u64 = 8;

/// Float constants smaller than this stay dense whatever their zeros.
pub const PACK_MIN_ELEMENTS: usize = 64;

/// The bytes saved by storing a tensor of `numel` elements of `dtype` with `nnz` non-zeros as a
/// sparse initializer (values + int64 linear indices) instead of densely; `None` when that is
/// not smaller (or the dtype is not a float type, or the tensor is small or all zeros).
pub fn sparse_saving(dtype: DType, numel: usize, nnz: usize) -> Option<u64> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
        || numel < PACK_MIN_ELEMENTS
        || nnz == 0
    {
        return None;
    }
    let es = (dtype.bits()? / 8) as u64;
    let dense = numel as u64 * es;
    let sparse = nnz as u64 * (es + INDEX_BYTES);
    (sparse < dense).then(|| dense - sparse)
}

/// Parses a mask pattern: `unstructured`, `rows`, `cols`, or `N:M` (e.g. `2:4`).
pub fn parse_pattern(s: &str) -> Result<MaskPattern, String> {
    match s {
        "unstructured" => Ok(MaskPattern::Unstructured),
        "rows" => Ok(MaskPattern::Rows),
        "cols" => Ok(MaskPattern::Cols),
        _ => {
            let bad = || {
                format!(
                    "mask pattern {s:?}: expected \"unstructured\", \"rows\", \"cols\" or \"N:M\""
                )
            };
            let (n, m) = s.split_once(':').ok_or_else(bad)?;
            let n: usize = n.trim().parse().map_err(|_| bad())?;
            let m: usize = m.trim().parse().map_err(|_| bad())?;
            if m == 0 || n == 0 || n > m {
                return Err(format!("mask pattern {s:?}: N:M needs 0 < N <= M"));
            }
            Ok(MaskPattern::NM { n, m })
        }
    }
}

fn f32_matrix(t: &Tensor, what: &str) -> Result<(usize, usize, Vec<f32>), String> {
    if t.dtype != DType::F32 || t.dims.len() != 2 {
        return Err(format!(
            "{what} needs a 2-D f32 constant, got {}{:?}",
            t.dtype, t.dims
        ));
    }
    let data = t.as_f32().ok_or_else(|| format!("{what}: not f32"))?;
    Ok((t.dims[0] as usize, t.dims[1] as usize, data.into_owned()))
}

fn sq(x: f32) -> f64 {
    (x as f64) * (x as f64)
}

/// `w` (a 2-D f32 constant named `name`) with a magnitude mask applied, and its note.
pub fn mask(
    backend: &dyn Backend,
    w: &Tensor,
    sparsity: f64,
    pattern: &str,
    name: &str,
) -> Result<(Tensor, Note), String> {
    let pat = parse_pattern(pattern)?;
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(format!("mask: sparsity {sparsity} is not in [0, 1]"));
    }
    let (k, n, data) = f32_matrix(w, "mask")?;
    let m = MatrixRef::new(k, n, &data).map_err(|e| e.to_string())?;
    let r = backend
        .magnitude_mask(m, sparsity as f32, pat)
        .map_err(|e| e.to_string())?;
    let masked = r.masked.data();
    let total: f64 = data.iter().map(|&x| sq(x)).sum();
    let removed: f64 = data
        .iter()
        .zip(masked)
        .map(|(&a, &b)| sq(a - b))
        .sum::<f64>();
    let rel_error = if total > 0.0 {
        (removed / total).sqrt()
    } else {
        0.0
    };
    let numel = k * n;
    let nnz = masked.iter().filter(|&&x| x != 0.0).count();
    let saving = sparse_saving(DType::F32, numel, nnz);
    let mut t = Tensor::from_f32(vec![k as i64, n as i64], masked);
    t.name = format!("{}.pruned", name.trim_matches('\''));
    let note = Note {
        kernel: format!("mask({pattern})"),
        constant: name.to_string(),
        shape: vec![k as i64, n as i64],
        rank: None,
        sparsity: Some(1.0 - nnz as f64 / numel.max(1) as f64),
        rel_error,
        params_before: numel as u64,
        params_after: if saving.is_some() { nnz } else { numel } as u64,
        shared: false,
        storage: Some(if saving.is_some() { "sparse" } else { "dense" }.into()),
        bytes_saved: Some(saving.unwrap_or(0)),
        whitened: None,
        method: None,
        hot_rows: None,
        pq_width: None,
        centroids: None,
    };
    Ok((t, note))
}

/// The MLP block's parts for [`neurons`]: `up` [D, F] (and `gate` [D, F], `bias` [F]) feed
/// `down` [F, E].
pub struct Block<'a> {
    /// Up projection [D, F].
    pub up: &'a Tensor,
    /// Down projection [F, E].
    pub down: &'a Tensor,
    /// Gate projection [D, F] (SwiGLU), if any.
    pub gate: Option<&'a Tensor>,
    /// The up projection's bias [F], if any.
    pub bias: Option<&'a Tensor>,
}

/// The hidden neurons to keep (ascending indices, an int64 tensor [F']) when a `sparsity`
/// fraction of the F neurons of `block` is removed, lowest importance first; importance is
/// ‖up[:, j]‖·‖down[j, :]‖ (·‖gate[:, j]‖). Ties keep the lower index. At least one neuron is
/// kept. The note's `rel_error` is ‖removed‖/‖all‖ over every weight of the block together.
pub fn neurons(block: &Block<'_>, sparsity: f64, name: &str) -> Result<(Tensor, Note), String> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(format!("neurons: sparsity {sparsity} is not in [0, 1)"));
    }
    let (d, f, up) = f32_matrix(block.up, "neurons (up)")?;
    let (f2, e, down) = f32_matrix(block.down, "neurons (down)")?;
    if f2 != f {
        return Err(format!(
            "neurons: up has {f} columns but down has {f2} rows"
        ));
    }
    let col_sq = |m: &[f32], cols: usize| {
        let mut acc = vec![0.0f64; cols];
        for row in m.chunks(cols.max(1)) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += sq(x);
            }
        }
        acc
    };
    let up_sq = col_sq(&up, f);
    let down_sq: Vec<f64> = down
        .chunks(e.max(1))
        .map(|r| r.iter().map(|&x| sq(x)).sum())
        .collect();
    let gate_sq = match block.gate {
        Some(g) => {
            let (dg, fg, gd) = f32_matrix(g, "neurons (gate)")?;
            if (dg, fg) != (d, f) {
                return Err(format!("neurons: gate is [{dg}, {fg}], up is [{d}, {f}]"));
            }
            Some(col_sq(&gd, f))
        }
        None => None,
    };
    let bias_sq = match block.bias {
        Some(b) => {
            let v = b
                .as_f32()
                .filter(|v| v.len() == f)
                .ok_or_else(|| format!("neurons: the bias must be f32[{f}]"))?;
            Some(v.iter().map(|&x| sq(x)).collect::<Vec<f64>>())
        }
        None => None,
    };
    let importance: Vec<f64> = (0..f)
        .map(|j| {
            let g = gate_sq.as_ref().map_or(1.0, |g| g[j].sqrt());
            up_sq[j].sqrt() * down_sq[j].sqrt() * g
        })
        .collect();
    let prune = ((sparsity * f as f64).round() as usize).min(f.saturating_sub(1));
    let keep_n = f - prune;
    let mut order: Vec<usize> = (0..f).collect();
    // Most important first; ties: the lower index.
    order.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order[..keep_n].to_vec();
    keep.sort_unstable();
    let mut kept_mask = vec![false; f];
    for &j in &keep {
        kept_mask[j] = true;
    }
    let per = |j: usize| {
        up_sq[j]
            + down_sq[j]
            + gate_sq.as_ref().map_or(0.0, |g| g[j])
            + bias_sq.as_ref().map_or(0.0, |b| b[j])
    };
    let total: f64 = (0..f).map(per).sum();
    let removed: f64 = (0..f).filter(|&j| !kept_mask[j]).map(per).sum();
    let per_neuron =
        (d + e + if block.gate.is_some() { d } else { 0 }) as u64 + u64::from(block.bias.is_some());
    let idx: Vec<i64> = keep.iter().map(|&j| j as i64).collect();
    let mut t = Tensor::from_i64(vec![idx.len() as i64], &idx);
    t.name = format!("{}.kept", name.trim_matches('\''));
    let note = Note {
        kernel: "neurons".into(),
        constant: name.to_string(),
        shape: vec![f as i64, e as i64],
        rank: None,
        sparsity: Some(prune as f64 / f.max(1) as f64),
        rel_error: if total > 0.0 {
            (removed / total).sqrt()
        } else {
            0.0
        },
        params_before: per_neuron * f as u64,
        params_after: per_neuron * keep_n as u64,
        shared: false,
        storage: None,
        bytes_saved: None,
        whitened: None,
        method: None,
        hot_rows: None,
        pq_width: None,
        centroids: None,
    };
    Ok((t, note))
}

/// The most nonzeros a float constant of `numel` elements of `es` bytes may have for COO
/// storage to be smaller ([`sparse_saving`]): `nnz·(es + INDEX_BYTES) < numel·es`.
fn max_sparse_nnz(numel: usize, es: usize) -> usize {
    let dense = numel as u64 * es as u64;
    (dense.saturating_sub(1) / (es as u64 + INDEX_BYTES)) as usize
}

/// Whether the little-endian float `c` (2, 4 or 8 bytes) is ±0.0.
fn float_is_zero(c: &[u8]) -> bool {
    match c.split_last() {
        Some((&last, rest)) => last & 0x7f == 0 && rest.iter().all(|&b| b == 0),
        None => true,
    }
}

/// The number of nonzero floats (±0.0 are zeros) in `raw` (elements of `es` bytes), or `None`
/// as soon as it exceeds `limit`. Counts a word at a time, in blocks, so that a dense constant
/// costs a fraction of one pass over its bytes.
fn count_nonzero_upto(raw: &[u8], es: usize, limit: usize) -> Option<usize> {
    const BLOCK: usize = 1 << 14;
    let mut nnz = 0usize;
    for block in raw.chunks(BLOCK * es) {
        nnz += match es {
            2 => block
                .chunks_exact(2)
                .filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7fff != 0)
                .count(),
            4 => block
                .chunks_exact(4)
                .filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff != 0)
                .count(),
            _ => block.chunks_exact(es).filter(|c| !float_is_zero(c)).count(),
        };
        if nnz > limit {
            return None;
        }
    }
    Some(nnz)
}

/// A constant [`pack_sparse`] converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    /// The constant's name.
    pub name: String,
    /// Non-zeros stored.
    pub nnz: usize,
    /// Bytes saved against dense storage.
    pub bytes_saved: u64,
}

/// Store every float initializer (not a graph input) for which [`sparse_saving`] says COO is
/// smaller as a sparse initializer: values [NNZ] and linear int64 indices [NNZ], row-major.
/// Readers are unchanged (a runtime densifies sparse initializers at load). Returns what was
/// converted, in stored order.
pub fn pack_sparse(g: &mut Graph) -> Vec<Packed> {
    let mut out = Vec::new();
    let inits: Vec<_> = g.initializers().to_vec();
    for v in inits {
        if g.inputs.contains(&v) {
            continue;
        }
        let ValueDef::Initializer(t) = &g.value(v).def else {
            continue;
        };
        let Some(es) = t.dtype.bits().map(|b| b / 8) else {
            continue;
        };
        if es == 0 || sparse_saving(t.dtype, t.num_elements(), 1).is_none() {
            continue;
        }
        let Some(raw) = t.raw() else { continue };
        // Dense constants (all of them in a pipeline without masks) are ruled out after the
        // first third or so of their bytes: the count stops once sparse storage cannot win.
        let Some(nnz) = count_nonzero_upto(raw, es, max_sparse_nnz(t.num_elements(), es)) else {
            continue;
        };
        let Some(saved) = sparse_saving(t.dtype, t.num_elements(), nnz) else {
            continue;
        };
        let mut values = Vec::with_capacity(nnz * es);
        let mut indices = Vec::with_capacity(nnz);
        for (i, c) in raw.chunks_exact(es).enumerate() {
            if !float_is_zero(c) {
                values.extend_from_slice(c);
                indices.push(i as i64);
            }
        }
        let name = g.value(v).name.clone();
        let sparse = SparseTensor {
            values: Tensor::from_raw(t.dtype, vec![nnz as i64], values.into()),
            indices: {
                let mut i = Tensor::from_i64(vec![nnz as i64], &indices);
                i.name = format!("{name}.indices");
                i
            },
            dims: t.dims.clone(),
        };
        g.value_mut(v).def = ValueDef::SparseInitializer(sparse);
        out.push(Packed {
            name,
            nnz,
            bytes_saved: saved,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::Cpu;

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("2:4"), Ok(MaskPattern::NM { n: 2, m: 4 }));
        assert_eq!(parse_pattern("rows"), Ok(MaskPattern::Rows));
        assert!(parse_pattern("5:4").is_err());
        assert!(parse_pattern("dense").is_err());
    }

    #[test]
    fn saving_rule() {
        // f32 with int64 indices: sparse is smaller only below 1/3 density.
        assert_eq!(sparse_saving(DType::F32, 300, 100), None);
        assert_eq!(sparse_saving(DType::F32, 300, 99), Some(1200 - 99 * 12));
        assert_eq!(sparse_saving(DType::F32, 300, 0), None);
        assert_eq!(sparse_saving(DType::I64, 300, 1), None);
    }

    #[test]
    fn mask_notes() {
        let data: Vec<f32> = (0..256).map(|i| (i as f32 - 127.5) / 10.0).collect();
        let w = Tensor::from_f32(vec![16, 16], &data);
        let (m, n) = mask(&Cpu, &w, 0.5, "unstructured", "W").unwrap();
        assert_eq!(n.storage.as_deref(), Some("dense"));
        assert_eq!(n.params_after, 256);
        assert_eq!(n.sparsity, Some(0.5));
        let kept = m.as_f32().unwrap();
        let err: f64 = data
            .iter()
            .zip(kept.iter())
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            / data.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        assert!((err - n.rel_error).abs() < 1e-12);
        let (_, n) = mask(&Cpu, &w, 0.9, "unstructured", "W").unwrap();
        assert_eq!(n.storage.as_deref(), Some("sparse"));
        assert_eq!(n.params_after, 26);
        assert_eq!(n.bytes_saved, Some(1024 - 26 * 12));
        let (_, n) = mask(&Cpu, &w, 0.0, "2:4", "W").unwrap();
        assert_eq!(n.params_after, n.params_before);
        assert_eq!(n.sparsity, Some(0.5));
    }

    #[test]
    fn neuron_choice() {
        // Neuron 1 has tiny weights: it goes first.
        let up = Tensor::from_f32(vec![2, 3], &[1., 0.01, 2., 1., 0.01, 2.]);
        let down = Tensor::from_f32(vec![3, 2], &[1., 1., 0.01, 0.01, 3., 3.]);
        let b = Block {
            up: &up,
            down: &down,
            gate: None,
            bias: None,
        };
        let (t, n) = neurons(&b, 0.34, "W").unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![0, 2]);
        assert_eq!((n.params_before, n.params_after), (12, 8));
        assert!(n.rel_error < 0.01);
    }

    #[test]
    fn pack_round_trip() {
        let mut g = Graph::new("g");
        let mut data = vec![0f32; 100];
        data[3] = 1.5;
        data[97] = -0.0;
        g.add_initializer("W", Tensor::from_f32(vec![10, 10], &data))
            .unwrap();
        let p = pack_sparse(&mut g);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].nnz, 1);
        let v = g.initializers()[0];
        let ValueDef::SparseInitializer(s) = &g.value(v).def else {
            panic!("not packed")
        };
        assert_eq!(s.indices.to_i64_vec().unwrap(), vec![3]);
        assert_eq!(s.dims, vec![10, 10]);
    }
}
