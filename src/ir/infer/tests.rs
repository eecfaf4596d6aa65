use super::*;
use crate::ir::{AttrValue, DType, Node, Tensor};

/// Test graph builder: every node gets fresh output names.
struct B {
    g: Graph,
    k: usize,
    opset: i64,
}

/// `"batch,seq,768"` → shape; `?` is unknown, `""` a scalar.
fn sh(spec: &str) -> Shape {
    if spec.is_empty() {
        return Vec::new();
    }
    spec.split(',')
        .map(|p| match p.trim() {
            "?" => Dim::Unknown,
            p => p
                .parse::<i64>()
                .map_or_else(|_| Dim::Sym(p.to_string()), Dim::Known),
        })
        .collect()
}

fn int(v: i64) -> AttrValue {
    AttrValue::Int(v)
}

fn ints(v: &[i64]) -> AttrValue {
    AttrValue::Ints(v.to_vec())
}

impl B {
    fn new(opset: i64) -> B {
        B {
            g: Graph::new("t"),
            k: 0,
            opset,
        }
    }

    fn fresh(&mut self, base: &str) -> String {
        self.k += 1;
        format!("{base}{}", self.k)
    }

    fn input(&mut self, elem: DType, spec: &str) -> ValueId {
        let name = self.fresh("in");
        self.g
            .add_input(name, Some(ValueType::tensor(elem, sh(spec))))
            .unwrap()
    }

    fn f(&mut self, spec: &str) -> ValueId {
        self.input(DType::F32, spec)
    }

    fn ints(&mut self, v: &[i64]) -> ValueId {
        let name = self.fresh("c");
        self.g
            .add_initializer(name, Tensor::from_i64(vec![v.len() as i64], v))
            .unwrap()
    }

    fn scalar(&mut self, v: i64) -> ValueId {
        let name = self.fresh("s");
        self.g
            .add_initializer(name, Tensor::from_i64(vec![], &[v]))
            .unwrap()
    }

    fn weight(&mut self, dims: &[i64]) -> ValueId {
        let name = self.fresh("w");
        let n = dims.iter().product::<i64>() as usize;
        self.g
            .add_initializer(name, Tensor::from_f32(dims.to_vec(), &vec![0.0; n]))
            .unwrap()
    }

    fn node_n(
        &mut self,
        op: &str,
        inputs: &[Option<ValueId>],
        attrs: Vec<(&str, AttrValue)>,
        nout: usize,
    ) -> Vec<ValueId> {
        let mut node = Node::new(op, self.fresh(op));
        for (k, v) in attrs {
            node = node.with_attr(k, v);
        }
        let outs = (0..nout).map(|_| Some(self.fresh("v"))).collect();
        let (_, outs) = self.g.add_node(node, inputs.to_vec(), outs).unwrap();
        outs.into_iter().flatten().collect()
    }

    fn node(&mut self, op: &str, inputs: &[ValueId], attrs: Vec<(&str, AttrValue)>) -> ValueId {
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        self.node_n(op, &ins, attrs, 1)[0]
    }

    fn run(&mut self) -> InferStats {
        infer_shapes(&mut self.g, self.opset)
    }

    /// The inferred type as text (`float[batch,seq]`), or `-` when not inferred.
    fn t(&self, v: ValueId) -> String {
        self.g
            .value(v)
            .inferred
            .as_ref()
            .map_or("-".to_string(), |t| t.to_string())
    }
}

/// Run and check there were no warnings.
fn clean(b: &mut B) -> InferStats {
    let s = b.run();
    assert!(s.warnings.is_empty(), "warnings: {:?}", s.warnings);
    s
}

#[test]
fn matmul_batch_broadcast_and_vectors() {
    let mut b = B::new(17);
    let x = b.f("batch,seq,768");
    let w = b.weight(&[768, 3072]);
    let y = b.node("MatMul", &[x, w], vec![]);
    let q = b.f("batch,12,seq,64");
    let k = b.f("1,12,64,seq");
    let s = b.node("MatMul", &[q, k], vec![]);
    let v = b.f("64");
    let mv = b.node("MatMul", &[q, v], vec![]);
    let vm = b.node("MatMul", &[v, k], vec![]);
    let vv = b.node("MatMul", &[v, v], vec![]);
    clean(&mut b);
    assert_eq!(b.t(y), "float[batch,seq,3072]");
    assert_eq!(b.t(s), "float[batch,12,seq,seq]");
    assert_eq!(b.t(mv), "float[batch,12,seq]");
    assert_eq!(b.t(vm), "float[1,12,seq]");
    assert_eq!(b.t(vv), "float[]");
}

#[test]
fn matmul_mismatch_warns() {
    let mut b = B::new(17);
    let x = b.f("2,3");
    let w = b.weight(&[4, 5]);
    let y = b.node("MatMul", &[x, w], vec![]);
    let s = b.run();
    assert_eq!(b.t(y), "-");
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains("MatMul") && s.warnings[0].contains("inner"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn gemm_transposes() {
    let mut b = B::new(17);
    let a = b.f("n,768");
    let w = b.weight(&[256, 768]);
    let c = b.weight(&[256]);
    let y = b.node("Gemm", &[a, w, c], vec![("transB", int(1))]);
    let at = b.f("768,n");
    let w2 = b.weight(&[768, 256]);
    let y2 = b.node("Gemm", &[at, w2], vec![("transA", int(1))]);
    let bad = b.node("Gemm", &[a, w2, c], vec![("transB", int(1))]);
    let s = b.run();
    assert_eq!(b.t(y), "float[n,256]");
    assert_eq!(b.t(y2), "float[n,256]");
    assert_eq!(b.t(bad), "-");
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
}

#[test]
fn gather_axes_and_contents() {
    let mut b = B::new(17);
    let emb = b.weight(&[50257, 768]);
    let ids = b.input(DType::I64, "batch,seq");
    let e = b.node("Gather", &[emb, ids], vec![]);
    let x = b.f("batch,seq,768");
    let i = b.scalar(-1);
    let last = b.node("Gather", &[x, i], vec![("axis", int(1))]);
    let sh = b.node("Shape", &[x], vec![]);
    let i0 = b.scalar(0);
    let d0 = b.node("Gather", &[sh, i0], vec![]);
    let i2 = b.ints(&[1, 0]);
    let d2 = b.node("Gather", &[sh, i2], vec![]);
    let bad = b.node("Gather", &[x, i], vec![("axis", int(3))]);
    let s = b.run();
    assert_eq!(b.t(e), "float[batch,seq,768]");
    assert_eq!(b.t(last), "float[batch,768]");
    assert_eq!(b.t(d0), "int64[]");
    assert_eq!(
        b.g.value(d0)
            .inferred
            .as_ref()
            .and_then(|t| t.shape().cloned()),
        Some(vec![])
    );
    assert_eq!(b.t(d2), "int64[2]");
    assert_eq!(b.t(bad), "-");
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
}

#[test]
fn broadcasting_with_symbols() {
    let mut b = B::new(17);
    let x = b.f("batch,12,seq,seq");
    let m = b.f("batch,1,1,seq");
    let y = b.node("Add", &[x, m], vec![]);
    let c = b.weight(&[]);
    let z = b.node("Mul", &[y, c], vec![]);
    let p = b.node("Pow", &[x, c], vec![]);
    let u = b.f("?,4");
    let v = b.f("a,1");
    let uv = b.node("Sub", &[u, v], vec![]);
    let a = b.f("a");
    let bb = b.f("b");
    let ab = b.node("Div", &[a, bb], vec![]);
    let eq = b.node("Equal", &[x, m], vec![]);
    let cond = b.input(DType::Bool, "1,1,seq,seq");
    let w = b.node("Where", &[cond, x, c], vec![]);
    let mx = b.node("Max", &[m, c], vec![]);
    let k3 = b.f("3");
    let k4 = b.f("4");
    let bad = b.node("Add", &[k3, k4], vec![]);
    let s = b.run();
    assert_eq!(b.t(y), "float[batch,12,seq,seq]");
    assert_eq!(b.t(z), "float[batch,12,seq,seq]");
    assert_eq!(b.t(p), "float[batch,12,seq,seq]");
    assert_eq!(b.t(uv), "float[?,4]");
    assert_eq!(b.t(ab), "float[?]");
    assert_eq!(b.t(eq), "bool[batch,12,seq,seq]");
    assert_eq!(b.t(w), "float[batch,12,seq,seq]");
    assert_eq!(b.t(mx), "float[batch,1,1,seq]");
    assert_eq!(b.t(bad), "-");
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].contains("broadcast"));
}

#[test]
fn transpose_perm_and_default() {
    let mut b = B::new(17);
    let x = b.f("batch,seq,12,64");
    let t = b.node("Transpose", &[x], vec![("perm", ints(&[0, 2, 1, 3]))]);
    let r = b.node("Transpose", &[x], vec![]);
    let bad = b.node("Transpose", &[x], vec![("perm", ints(&[0, 0, 1, 3]))]);
    let bad2 = b.node("Transpose", &[x], vec![("perm", ints(&[0, 1]))]);
    let s = b.run();
    assert_eq!(b.t(t), "float[batch,12,seq,64]");
    assert_eq!(b.t(r), "float[64,12,seq,batch]");
    assert_eq!((b.t(bad), b.t(bad2)), ("-".into(), "-".into()));
    assert_eq!(s.warnings.len(), 2);
}

#[test]
fn reshape_zero_minus_one_symbolic() {
    let mut b = B::new(17);
    let x = b.f("batch,seq,768");
    let s1 = b.ints(&[0, 0, 12, 64]);
    let r1 = b.node("Reshape", &[x, s1], vec![]);
    let s2 = b.ints(&[-1, 768]);
    let r2 = b.node("Reshape", &[x, s2], vec![]);
    let s3 = b.ints(&[0, -1, 64]);
    let r3 = b.node("Reshape", &[x, s3], vec![]);
    let h = b.f("batch,12,seq,64");
    let s4 = b.ints(&[0, 0, -1]);
    let r4 = b.node("Reshape", &[h, s4], vec![]);
    let s5 = b.ints(&[-1]);
    let r5 = b.node("Reshape", &[x, s5], vec![]);
    let s6 = b.ints(&[2, -1]);
    let r6 = b.node("Reshape", &[x, s6], vec![]);
    let k = b.f("4,0");
    let s7 = b.ints(&[0, 4]);
    let r7 = b.node("Reshape", &[k, s7], vec![("allowzero", int(1))]);
    let r7b = b.node("Reshape", &[k, s7], vec![]);
    let y = b.f("6,4");
    let s8 = b.ints(&[5, -1]);
    let bad = b.node("Reshape", &[y, s8], vec![]);
    let s9 = b.ints(&[-1, -1]);
    let bad2 = b.node("Reshape", &[y, s9], vec![]);
    let st = b.input(DType::I64, "3");
    let r10 = b.node("Reshape", &[x, st], vec![]);
    let s = b.run();
    assert_eq!(b.t(r1), "float[batch,seq,12,64]");
    assert_eq!(b.t(r2), "float[batch*seq,768]");
    assert_eq!(b.t(r3), "float[batch,?,64]", "12*seq has a coefficient");
    assert_eq!(b.t(r4), "float[batch,12,?]");
    assert_eq!(b.t(r5), "float[?]");
    assert_eq!(b.t(r6), "float[2,?]");
    assert_eq!(b.t(r7), "float[0,4]");
    assert_eq!(
        b.t(r7b),
        "-",
        "0 copies without allowzero: 0 elements into 16"
    );
    assert_eq!((b.t(bad), b.t(bad2)), ("-".into(), "-".into()));
    assert_eq!(b.t(r10), "float[?,?,?]");
    assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
}

#[test]
fn reshape_cancels_symbols() {
    let mut b = B::new(17);
    let x = b.f("batch,12,seq,64");
    let s1 = b.ints(&[0, -1, 64]);
    let r1 = b.node("Reshape", &[x, s1], vec![]);
    let t = b.node("Transpose", &[x], vec![("perm", ints(&[0, 2, 1, 3]))]);
    let s2 = b.ints(&[0, -1, 768]);
    let r2 = b.node("Reshape", &[t, s2], vec![]);
    let flat = b.f("batch*seq,768");
    let shp = b.f("batch,seq,3");
    let sh = b.node("Shape", &[shp], vec![]);
    let s3 = b.ints(&[0, 2]);
    let bs = b.node("Gather", &[sh, s3], vec![]);
    let m1 = b.ints(&[-1]);
    let tgt = b.node("Concat", &[bs, m1], vec![("axis", int(0))]);
    let r3 = b.node("Reshape", &[flat, tgt], vec![]);
    clean(&mut b);
    assert_eq!(b.t(r1), "float[batch,?,64]");
    assert_eq!(b.t(r2), "float[batch,seq,768]");
    assert_eq!(b.t(r3), "float[batch,3,?]");
}

/// The torch-export plumbing: Shape → Gather → Unsqueeze → Concat → Reshape.
#[test]
fn shape_plumbing_chain() {
    for opset in [11, 13, 17] {
        let mut b = B::new(opset);
        let x = b.f("batch,seq,768");
        let sh = b.node("Shape", &[x], vec![]);
        let i0 = b.scalar(0);
        let i1 = b.scalar(1);
        let d0 = b.node("Gather", &[sh, i0], vec![("axis", int(0))]);
        let d1 = b.node("Gather", &[sh, i1], vec![("axis", int(0))]);
        let unsq = |b: &mut B, v: ValueId| {
            if opset >= 13 {
                let ax = b.ints(&[0]);
                b.node("Unsqueeze", &[v, ax], vec![])
            } else {
                b.node("Unsqueeze", &[v], vec![("axes", ints(&[0]))])
            }
        };
        let u0 = unsq(&mut b, d0);
        let u1 = unsq(&mut b, d1);
        let heads = b.ints(&[12]);
        let hd = b.ints(&[64]);
        let tgt = b.node("Concat", &[u0, u1, heads, hd], vec![("axis", int(0))]);
        let r = b.node("Reshape", &[x, tgt], vec![]);
        // Arithmetic on the plumbing: seq * 2 / 2, cast round trip.
        let two = b.scalar(2);
        let m = b.node("Mul", &[d1, two], vec![]);
        let dv = b.node("Div", &[m, two], vec![]);
        let c = b.node("Cast", &[dv], vec![("to", int(7))]);
        let u2 = unsq(&mut b, c);
        let all = b.ints(&[768]);
        let tgt2 = b.node("Concat", &[u0, u2, all], vec![("axis", int(0))]);
        let r2 = b.node("Reshape", &[r, tgt2], vec![]);
        // Squeeze back to a scalar, then Range and ConstantOfShape.
        let sq = if opset >= 13 {
            let ax = b.ints(&[0]);
            b.node("Squeeze", &[u1, ax], vec![])
        } else {
            b.node("Squeeze", &[u1], vec![("axes", ints(&[0]))])
        };
        let zero = b.scalar(0);
        let one = b.scalar(1);
        let pos = b.node("Range", &[zero, sq, one], vec![]);
        let cat2 = b.node("Concat", &[u1, u1], vec![("axis", int(0))]);
        let mask = b.node("ConstantOfShape", &[cat2], vec![]);
        // Slice of the shape vector: the last two dims.
        let (st, en) = (b.ints(&[-2]), b.ints(&[i64::MAX]));
        let tail = if opset >= 10 {
            b.node("Slice", &[sh, st, en], vec![])
        } else {
            unreachable!()
        };
        let ex_in = b.f("1,768");
        let ex_shape = b.node("Concat", &[u0, tail], vec![("axis", int(0))]);
        let ex = b.node("Expand", &[ex_in, ex_shape], vec![]);
        let sub = b.node("Sub", &[d1, one], vec![]);
        let add = b.node("Add", &[sub, one], vec![]);
        let u3 = unsq(&mut b, add);
        let mask2 = b.node(
            "ConstantOfShape",
            &[u3],
            vec![("value", AttrValue::Tensor(Tensor::from_i64(vec![1], &[1])))],
        );
        clean(&mut b);
        assert_eq!(b.t(r), "float[batch,seq,12,64]", "opset {opset}");
        assert_eq!(b.t(r2), "float[batch,seq,768]", "opset {opset}");
        assert_eq!(b.t(sq), "int64[]");
        assert_eq!(b.t(pos), "int64[seq]");
        assert_eq!(b.t(mask), "float[seq,seq]");
        assert_eq!(b.t(tail), "int64[2]");
        assert_eq!(b.t(ex), "float[batch,seq,768]");
        assert_eq!(b.t(mask2), "int64[?]", "seq-1+1 is not tracked");
    }
}

/// The torch-export Expand plumbing: Where(Equal(shape, -1), ones, shape).
#[test]
fn expand_where_equal_plumbing() {
    let mut b = B::new(17);
    let mask = b.input(DType::I64, "batch,seq");
    let sh = b.node("Shape", &[mask], vec![]);
    let i0 = b.scalar(0);
    let d0 = b.node("Gather", &[sh, i0], vec![]);
    let i1 = b.scalar(1);
    let d1 = b.node("Gather", &[sh, i1], vec![]);
    let a0 = b.ints(&[0]);
    let u0 = b.node("Unsqueeze", &[d0, a0], vec![]);
    let u1 = b.node("Unsqueeze", &[d1, a0], vec![]);
    let one = b.ints(&[1]);
    let tgt = b.node("Concat", &[u0, one, one, u1], vec![("axis", int(0))]);
    let four = b.ints(&[4]);
    let ones = b.node(
        "ConstantOfShape",
        &[four],
        vec![("value", AttrValue::Tensor(Tensor::from_i64(vec![1], &[1])))],
    );
    let m1 = b.scalar(-1);
    let neg = b.node("Mul", &[ones, m1], vec![]);
    let eq = b.node("Equal", &[tgt, neg], vec![]);
    let w = b.node("Where", &[eq, ones, tgt], vec![]);
    let a12 = b.ints(&[1, 2]);
    let m4 = b.node("Unsqueeze", &[mask, a12], vec![]);
    let ex = b.node("Expand", &[m4, w], vec![]);
    clean(&mut b);
    assert_eq!(b.t(ones), "int64[4]");
    assert_eq!(b.t(eq), "bool[4]");
    assert_eq!(b.t(w), "int64[4]");
    assert_eq!(b.t(ex), "int64[batch,1,1,seq]");
}

#[test]
fn split_forms() {
    let mut b = B::new(17);
    let x = b.f("batch,seq,2304");
    let outs = b.node_n("Split", &[Some(x)], vec![("axis", int(2))], 3);
    let sizes = b.ints(&[768, 1536]);
    let o2 = b.node_n("Split", &[Some(x), Some(sizes)], vec![("axis", int(-1))], 2);
    let bad = b.node_n("Split", &[Some(x), Some(sizes)], vec![("axis", int(0))], 3);
    let y = b.f("7,seq");
    let sym = b.node_n("Split", &[Some(y)], vec![("axis", int(1))], 2);
    let shv = b.node("Shape", &[x], vec![]);
    let parts = b.node_n("Split", &[Some(shv)], vec![], 3);
    let s = b.run();
    for o in &outs {
        assert_eq!(b.t(*o), "float[batch,seq,768]");
    }
    assert_eq!(b.t(o2[0]), "float[batch,seq,768]");
    assert_eq!(b.t(o2[1]), "float[batch,seq,1536]");
    assert!(bad.iter().all(|v| b.t(*v) == "-"));
    assert_eq!(b.t(sym[0]), "float[7,?]");
    assert_eq!(b.t(parts[1]), "int64[1]");
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);

    let mut b = B::new(18);
    let y = b.f("7,4");
    let o = b.node_n("Split", &[Some(y)], vec![("num_outputs", int(3))], 3);
    let o11 = {
        let mut b11 = B::new(11);
        let y = b11.f("7,4");
        let o = b11.node_n("Split", &[Some(y)], vec![("split", ints(&[2, 5]))], 2);
        clean(&mut b11);
        (b11.t(o[0]), b11.t(o[1]))
    };
    clean(&mut b);
    assert_eq!(
        (b.t(o[0]), b.t(o[1]), b.t(o[2])),
        (
            "float[3,4]".into(),
            "float[3,4]".into(),
            "float[1,4]".into()
        )
    );
    assert_eq!(o11, ("float[2,4]".into(), "float[5,4]".into()));
}

#[test]
fn concat_shapes() {
    let mut b = B::new(17);
    let a = b.f("batch,seq,32");
    let c = b.f("batch,?,32");
    let y = b.node("Concat", &[a, c], vec![("axis", int(-1))]);
    let z = b.node("Concat", &[a, a], vec![("axis", int(1))]);
    let e = b.f("batch,0,32");
    let w = b.node("Concat", &[e, a], vec![("axis", int(1))]);
    let d = b.f("batch,seq,16");
    let bad = b.node("Concat", &[a, d], vec![("axis", int(0))]);
    let noaxis = b.node("Concat", &[a, d], vec![]);
    let s = b.run();
    assert_eq!(b.t(y), "float[batch,seq,64]");
    assert_eq!(b.t(z), "float[batch,?,32]");
    assert_eq!(b.t(w), "float[batch,seq,32]");
    assert_eq!((b.t(bad), b.t(noaxis)), ("-".into(), "-".into()));
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
}

#[test]
fn unsqueeze_squeeze_by_opset() {
    let mut b = B::new(11);
    let x = b.f("batch,seq");
    let u = b.node("Unsqueeze", &[x], vec![("axes", ints(&[1, -1]))]);
    let sq = b.node("Squeeze", &[u], vec![("axes", ints(&[1]))]);
    let all = b.node("Squeeze", &[u], vec![]);
    let k = b.f("1,3,1");
    let allk = b.node("Squeeze", &[k], vec![]);
    let bad = b.node("Squeeze", &[k], vec![("axes", ints(&[1]))]);
    let s = b.run();
    assert_eq!(b.t(u), "float[batch,1,seq,1]");
    assert_eq!(b.t(sq), "float[batch,seq,1]");
    assert_eq!(b.t(all), "float", "symbols may be 1: rank unknown");
    assert_eq!(b.t(allk), "float[3]");
    assert_eq!(b.t(bad), "-");
    assert_eq!(s.warnings.len(), 1);

    let mut b = B::new(13);
    let x = b.f("batch,seq");
    let ax = b.ints(&[0, 3]);
    let u = b.node("Unsqueeze", &[x, ax], vec![]);
    let ax2 = b.ints(&[-1]);
    let sq = b.node("Squeeze", &[u, ax2], vec![]);
    let dynax = b.input(DType::I64, "1");
    let ud = b.node("Unsqueeze", &[x, dynax], vec![]);
    let old_style = b.node("Unsqueeze", &[x], vec![("axes", ints(&[0]))]);
    let s = b.run();
    assert_eq!(b.t(u), "float[1,batch,seq,1]");
    assert_eq!(b.t(sq), "float[1,batch,seq]");
    assert_eq!(b.t(ud), "float");
    assert_eq!(b.t(old_style), "-");
    assert_eq!(
        s.warnings.len(),
        1,
        "axes attribute at opset 13: {:?}",
        s.warnings
    );
}

fn b2(b: &mut B, v: i64) -> ValueId {
    b.ints(&[v])
}

#[test]
fn slice_bounds() {
    let mut b = B::new(17);
    let x = b.f("batch,9,seq,64");
    let (s0, s32, s64, ax) = (b.ints(&[0]), b.ints(&[32]), b.ints(&[64]), b.ints(&[-1]));
    let lo = b.node("Slice", &[x, s0, s32, ax], vec![]);
    let hi = b.node("Slice", &[x, s32, s64, ax], vec![]);
    let (big, neg2) = (b.ints(&[i64::MAX]), b.ints(&[-2]));
    let tail = b.node("Slice", &[x, neg2, big, ax], vec![]);
    let (a2, st2) = (b.ints(&[2]), b.ints(&[2]));
    let symall = b.node("Slice", &[x, s0, big, a2], vec![]);
    let step = b.node("Slice", &[x, s0, big, ax, st2], vec![]);
    let (m1, min) = (b.ints(&[-1]), b.ints(&[i64::MIN]));
    let rev = b.node("Slice", &[x, m1, min, ax, m1], vec![]);
    let symhalf = b.node("Slice", &[x, s32, big, a2], vec![]);
    let k1000 = b.ints(&[1000]);
    let clamp = b.node("Slice", &[x, s0, k1000, ax], vec![]);
    let (p, q, r) = (b.ints(&[1, 0]), b.ints(&[3, 16]), b.ints(&[1, 3]));
    let two_ax = b.node("Slice", &[x, p, q, r], vec![]);
    let zero = b.ints(&[0]);
    let bad = b.node("Slice", &[x, s0, big, ax, zero], vec![]);
    let table = b.f("1,512");
    let shp = b.node("Shape", &[x], vec![]);
    let (p2, p3) = (b2(&mut b, 2), b2(&mut b, 3));
    let seq = b.node("Slice", &[shp, p2, p3], vec![]);
    let (z, one) = (b.ints(&[0]), b.ints(&[1]));
    let pos = b.node("Slice", &[table, z, seq, one], vec![]);
    let dynend = b.input(DType::I64, "1");
    let dy = b.node("Slice", &[x, s0, dynend, ax], vec![]);
    let s = b.run();
    assert_eq!(b.t(lo), "float[batch,9,seq,32]");
    assert_eq!(b.t(hi), "float[batch,9,seq,32]");
    assert_eq!(b.t(tail), "float[batch,9,seq,2]");
    assert_eq!(b.t(symall), "float[batch,9,seq,64]");
    assert_eq!(b.t(step), "float[batch,9,seq,32]");
    assert_eq!(b.t(rev), "float[batch,9,seq,64]");
    assert_eq!(b.t(symhalf), "float[batch,9,?,64]");
    assert_eq!(b.t(clamp), "float[batch,9,seq,64]");
    assert_eq!(b.t(two_ax), "float[batch,2,seq,16]");
    assert_eq!(b.t(bad), "-");
    assert_eq!(b.t(dy), "float[batch,9,seq,?]");
    assert_eq!(b.t(seq), "int64[1]");
    assert_eq!(
        b.t(pos),
        "float[1,seq]",
        "x[:, :seq] of a static table is assumed to have seq rows"
    );
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);

    let mut b = B::new(9);
    let x = b.f("10,20");
    let y = b.node(
        "Slice",
        &[x],
        vec![
            ("starts", ints(&[1, -5])),
            ("ends", ints(&[3, 100])),
            ("axes", ints(&[0, 1])),
        ],
    );
    clean(&mut b);
    assert_eq!(b.t(y), "float[2,5]");
}

#[test]
fn norms_softmax_unary() {
    let mut b = B::new(17);
    let x = b.f("batch,seq,768");
    let g = b.weight(&[768]);
    let ln = b.node_n(
        "LayerNormalization",
        &[Some(x), Some(g), Some(g)],
        vec![("axis", int(-1))],
        3,
    );
    let ln1 = b.node_n(
        "LayerNormalization",
        &[Some(x), Some(g)],
        vec![("axis", int(1))],
        1,
    );
    let sm = b.node("Softmax", &[x], vec![("axis", int(-1))]);
    let mut outs = vec![];
    for op in [
        "Erf",
        "Tanh",
        "Sigmoid",
        "Sqrt",
        "Neg",
        "Relu",
        "Gelu",
        "Exp",
        "Log",
        "Abs",
        "Reciprocal",
        "Identity",
        "Trilu",
    ] {
        outs.push(b.node(op, &[x], vec![]));
    }
    let lo = b.weight(&[]);
    let clip = b.node_n("Clip", &[Some(x), None, Some(lo)], vec![], 1);
    let bl = b.input(DType::Bool, "seq");
    let nb = b.node("Not", &[bl], vec![]);
    let isn = b.node("IsNaN", &[x], vec![]);
    let dr = b.node_n("Dropout", &[Some(x)], vec![], 2);
    let untyped = b.g.add_input("untyped", None).unwrap();
    let u = b.node("Relu", &[untyped], vec![]);
    clean(&mut b);
    assert_eq!(b.t(ln[0]), "float[batch,seq,768]");
    assert_eq!(b.t(ln[1]), "float[batch,seq,1]");
    assert_eq!(b.t(ln[2]), "float[batch,seq,1]");
    assert_eq!(b.t(ln1[0]), "float[batch,seq,768]");
    assert_eq!(b.t(sm), "float[batch,seq,768]");
    for o in outs {
        assert_eq!(b.t(o), "float[batch,seq,768]");
    }
    assert_eq!(b.t(clip[0]), "float[batch,seq,768]");
    assert_eq!(b.t(nb), "bool[seq]");
    assert_eq!(b.t(isn), "bool[batch,seq,768]");
    assert_eq!(
        (b.t(dr[0]), b.t(dr[1])),
        ("float[batch,seq,768]".into(), "bool[batch,seq,768]".into())
    );
    assert_eq!(b.t(u), "-");
}

#[test]
fn cast_shape_size() {
    let mut b = B::new(17);
    let x = b.f("batch,seq,768");
    let c = b.node("Cast", &[x], vec![("to", int(10))]);
    let sh = b.node("Shape", &[x], vec![]);
    let mid = b.node("Shape", &[x], vec![("start", int(1)), ("end", int(-1))]);
    let empty = b.node("Shape", &[x], vec![("start", int(5))]);
    let sz = b.node("Size", &[x], vec![]);
    let bad = b.node("Cast", &[x], vec![("to", int(99))]);
    let bad2 = b.node("Cast", &[x], vec![]);
    let s = b.run();
    assert_eq!(b.t(c), "float16[batch,seq,768]");
    assert_eq!(b.t(sh), "int64[3]");
    assert_eq!(b.t(mid), "int64[1]");
    assert_eq!(b.t(empty), "int64[0]");
    assert_eq!(b.t(sz), "int64[]");
    assert_eq!((b.t(bad), b.t(bad2)), ("-".into(), "-".into()));
    assert_eq!(s.warnings.len(), 2);
}

#[test]
fn constants() {
    let mut b = B::new(17);
    let t = b.node_n(
        "Constant",
        &[],
        vec![(
            "value",
            AttrValue::Tensor(Tensor::from_i64(vec![2], &[0, 64])),
        )],
        1,
    )[0];
    let vf = b.node_n(
        "Constant",
        &[],
        vec![("value_float", AttrValue::Float(1.0))],
        1,
    )[0];
    let vfs = b.node_n(
        "Constant",
        &[],
        vec![("value_floats", AttrValue::Floats(vec![1.0, 2.0]))],
        1,
    )[0];
    let vi = b.node_n("Constant", &[], vec![("value_int", int(3))], 1)[0];
    let vis = b.node_n(
        "Constant",
        &[],
        vec![("value_ints", ints(&[0, 0, 12, 64]))],
        1,
    )[0];
    let none = b.node_n("Constant", &[], vec![], 1)[0];
    let wrong = b.node_n(
        "Constant",
        &[],
        vec![("value_int", AttrValue::Float(1.0))],
        1,
    )[0];
    let x = b.f("batch,seq,768");
    let r = b.node("Reshape", &[x, vis], vec![]);
    let s = b.run();
    assert_eq!(b.t(t), "int64[2]");
    assert_eq!(b.t(vf), "float[]");
    assert_eq!(b.t(vfs), "float[2]");
    assert_eq!(b.t(vi), "int64[]");
    assert_eq!(b.t(vis), "int64[4]");
    assert_eq!((b.t(none), b.t(wrong)), ("-".into(), "-".into()));
    assert_eq!(b.t(r), "float[batch,seq,12,64]");
    assert_eq!(s.warnings.len(), 2);
}

#[test]
fn constant_of_shape_expand_range_trilu() {
    let mut b = B::new(17);
    let shape = b.ints(&[3, 4]);
    let c = b.node("ConstantOfShape", &[shape], vec![]);
    let ci = b.node(
        "ConstantOfShape",
        &[shape],
        vec![("value", AttrValue::Tensor(Tensor::from_i64(vec![1], &[7])))],
    );
    let x = b.f("batch,1,seq");
    let es = b.ints(&[1, 12, 1]);
    let e = b.node("Expand", &[x, es], vec![]);
    let es2 = b.ints(&[2, 1, 1, 1]);
    let e2 = b.node("Expand", &[x, es2], vec![]);
    let (s0, s10, s3) = (b.scalar(0), b.scalar(10), b.scalar(3));
    let r = b.node("Range", &[s0, s10, s3], vec![]);
    let m = b.scalar(-2);
    let r2 = b.node("Range", &[s10, s0, m], vec![]);
    let tr = b.node("Trilu", &[c, s0], vec![("upper", int(1))]);
    let bad = b.node("Range", &[s0, s10, s0], vec![]);
    let s = b.run();
    assert_eq!(b.t(c), "float[3,4]");
    assert_eq!(b.t(ci), "int64[3,4]");
    assert_eq!(b.t(e), "float[batch,12,seq]");
    assert_eq!(b.t(e2), "float[2,batch,1,seq]");
    assert_eq!(b.t(r), "int64[4]");
    assert_eq!(b.t(r2), "int64[5]");
    assert_eq!(b.t(tr), "float[3,4]");
    assert_eq!(b.t(bad), "-");
    assert_eq!(s.warnings.len(), 1);
}

#[test]
fn reductions_flatten_tile_argmax() {
    let mut b = B::new(17);
    let x = b.f("batch,seq,768");
    let m = b.node("ReduceMean", &[x], vec![("axes", ints(&[-1]))]);
    let m2 = b.node(
        "ReduceMean",
        &[x],
        vec![("axes", ints(&[1])), ("keepdims", int(0))],
    );
    let all = b.node("ReduceMax", &[x], vec![("keepdims", int(0))]);
    let ax = b.ints(&[1]);
    let rs = b.node("ReduceSum", &[x, ax], vec![]);
    let rs0 = b.node("ReduceSum", &[x], vec![("keepdims", int(0))]);
    let noop = b.node("ReduceSum", &[x], vec![("noop_with_empty_axes", int(1))]);
    let fl = b.node("Flatten", &[x], vec![]);
    let fl0 = b.node("Flatten", &[x], vec![("axis", int(0))]);
    let fl2 = b.node("Flatten", &[x], vec![("axis", int(2))]);
    let reps = b.ints(&[1, 2, 1]);
    let ti = b.node("Tile", &[x, reps], vec![]);
    let am = b.node(
        "ArgMax",
        &[x],
        vec![("axis", int(-1)), ("keepdims", int(0))],
    );
    let bad = b.node("ReduceMean", &[x], vec![("axes", ints(&[3]))]);
    let s = b.run();
    assert_eq!(b.t(m), "float[batch,seq,1]");
    assert_eq!(b.t(m2), "float[batch,768]");
    assert_eq!(b.t(all), "float[]");
    assert_eq!(b.t(rs), "float[batch,1,768]");
    assert_eq!(b.t(rs0), "float[]");
    assert_eq!(b.t(noop), "float[batch,seq,768]");
    assert_eq!(b.t(fl), "float[batch,?]", "768*seq has a coefficient");
    assert_eq!(b.t(fl0), "float[1,?]");
    assert_eq!(b.t(fl2), "float[batch*seq,768]");
    assert_eq!(b.t(ti), "float[batch,?,768]");
    assert_eq!(b.t(am), "int64[batch,seq]");
    assert_eq!(b.t(bad), "-");
    assert_eq!(s.warnings.len(), 1);

    // ReduceMean takes axes as an input from opset 18 on.
    let mut b = B::new(18);
    let x = b.f("batch,seq,768");
    let ax = b.ints(&[-1]);
    let m = b.node("ReduceMean", &[x, ax], vec![]);
    clean(&mut b);
    assert_eq!(b.t(m), "float[batch,seq,1]");
}

#[test]
fn stats_unknown_ops_declared_types_and_conflicts() {
    let mut b = B::new(17);
    let x = b.f("batch,seq,768");
    let w = b.weight(&[768, 10]);
    let y = b.node("MatMul", &[x, w], vec![]);
    let z = b.node("FancyOp", &[y], vec![]);
    b.g.declare_value_info(z, Some(ValueType::tensor(DType::F32, sh("batch,seq,10"))));
    let after = b.node("Relu", &[z], vec![]);
    // A declared type fills what inference cannot tell.
    let st = b.input(DType::I64, "2");
    let r = b.node("Reshape", &[after, st], vec![]);
    b.g.declare_value_info(r, Some(ValueType::tensor(DType::F32, sh("n,10"))));
    // A contradiction is reported and the inferred type kept.
    b.g.declare_value_info(y, Some(ValueType::tensor(DType::F32, sh("batch,seq,11"))));
    let mut ms = Node::new("Foo", "ms");
    ms.domain = "com.microsoft".into();
    let (_, o) =
        b.g.add_node(ms, vec![Some(x)], vec![Some("ms_out".into())])
            .unwrap();
    let s = b.run();
    assert_eq!(b.t(z), "-");
    assert_eq!(b.t(after), "float[batch,seq,10]");
    assert_eq!(b.t(r), "float[n,10]");
    assert_eq!(b.t(y), "float[batch,seq,10]");
    assert!(o[0].is_some_and(|v| b.g.value(v).inferred.is_none()));
    assert_eq!(s.conflicts, 1);
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].contains(&b.g.value(y).name));
    assert_eq!(s.unsupported.get("FancyOp"), Some(&1));
    assert_eq!(s.unsupported.get("com.microsoft:Foo"), Some(&1));
    assert_eq!(s.nodes, 5);
    assert_eq!(s.total, 8);
    assert_eq!(s.inferred, 6);
    // Running again gives the same result (inferred types are reset first).
    assert_eq!(b.run(), s);
}

/// Every rule survives garbage: wrong attribute types, scalars, huge numbers, missing inputs.
#[test]
fn never_panics_on_garbage() {
    let ops = [
        "Identity",
        "Neg",
        "Abs",
        "Erf",
        "Softmax",
        "Not",
        "IsNaN",
        "Dropout",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Equal",
        "Where",
        "Max",
        "Min",
        "MatMul",
        "Gemm",
        "Gather",
        "GatherElements",
        "Transpose",
        "Reshape",
        "Split",
        "Concat",
        "Unsqueeze",
        "Squeeze",
        "Slice",
        "LayerNormalization",
        "Cast",
        "CastLike",
        "Shape",
        "Size",
        "Constant",
        "ConstantOfShape",
        "Expand",
        "Range",
        "Flatten",
        "Tile",
        "ReduceMean",
        "ReduceSum",
        "ArgMax",
        "Trilu",
        "Clip",
    ];
    let attr_sets: Vec<Vec<(&str, AttrValue)>> = vec![
        vec![],
        vec![
            ("axis", int(i64::MAX)),
            ("axes", ints(&[i64::MIN, 7])),
            ("perm", ints(&[5, -9])),
            ("to", int(-3)),
            ("split", ints(&[-4, i64::MAX])),
            ("num_outputs", int(0)),
            ("start", int(i64::MIN)),
            ("end", int(i64::MAX)),
            ("keepdims", int(0)),
            ("stash_type", int(1234)),
            ("starts", ints(&[i64::MIN])),
            ("ends", ints(&[i64::MAX])),
            ("transA", int(1)),
        ],
        vec![
            ("axis", AttrValue::Float(1.0)),
            ("axes", AttrValue::Float(0.5)),
            ("perm", int(1)),
            ("to", AttrValue::Floats(vec![])),
            ("value", AttrValue::Int(3)),
            ("split", int(2)),
            ("allowzero", ints(&[1])),
        ],
        vec![(
            "value",
            AttrValue::Tensor(Tensor::from_i64(vec![3], &[1, 2, 3])),
        )],
    ];
    for opset in [9, 11, 13, 18] {
        for attrs in &attr_sets {
            for op in ops {
                let mut b = B::new(opset);
                let inputs = vec![
                    Some(b.f("")),
                    Some(b.ints(&[i64::MAX, -1, 0, i64::MIN])),
                    Some(b.scalar(i64::MIN)),
                    Some(b.ints(&[-1, -1])),
                    None,
                    Some(b.f("0,?,x,-5")),
                    Some(b.ints(&[])),
                ];
                for k in 0..inputs.len() {
                    for rot in 0..inputs.len() {
                        let mut ins = inputs.clone();
                        ins.rotate_left(rot);
                        ins.truncate(k);
                        b.node_n(op, &ins, attrs.clone(), 3);
                    }
                }
                let big = b.ints(&[i64::MAX, i64::MAX]);
                let x = b.f("9223372036854775807,9223372036854775807");
                b.node_n(op, &[Some(x), Some(big), Some(big)], attrs.clone(), 2);
                b.node_n(op, &[Some(big), Some(x), Some(big)], attrs.clone(), 1);
                let stats = b.run();
                assert!(stats.inferred <= stats.total);
            }
        }
    }
}

#[test]
fn empty_and_negative_extents() {
    let mut b = B::new(17);
    let x = b.f("0,-3,4");
    let (s, e, st) = (b.ints(&[-1, 0]), b.ints(&[i64::MIN, 9]), b.ints(&[-1, -2]));
    let ax = b.ints(&[0, 1]);
    let y = b.node("Slice", &[x, s, e, ax, st], vec![]);
    let empty = b.ints(&[]);
    let (s1, e1, a1, m1) = (
        b.ints(&[-1]),
        b.ints(&[i64::MIN]),
        b.ints(&[0]),
        b.ints(&[-1]),
    );
    let z = b.node("Slice", &[empty, s1, e1, a1, m1], vec![]);
    let huge = b.input(DType::I64, "9223372036854775807");
    let r = b.node("Reshape", &[x, huge], vec![]);
    let c = b.node("ConstantOfShape", &[huge], vec![]);
    b.run();
    assert_eq!(b.t(y), "float[0,?,4]");
    assert_eq!(b.t(z), "int64[0]");
    assert_eq!((b.t(r), b.t(c)), ("float".into(), "float".into()));
}

#[test]
fn cycle_is_a_warning() {
    let mut b = B::new(17);
    let x = b.f("2");
    let y = b.node("Relu", &[x], vec![]);
    let (n, _) =
        b.g.add_node(
            Node::new("Relu", "loop"),
            vec![Some(y)],
            vec![Some("z".into())],
        )
        .unwrap();
    let z = b.g.value_by_name("z").unwrap();
    let (first, _) = b.g.producer(y).unwrap();
    b.g.set_input(first, 0, Some(z));
    let s = b.run();
    assert_eq!(s.warnings.len(), 1);
    assert!(s.warnings[0].contains("cycle"));
    assert!(b.g.value(y).inferred.is_none() && b.g.contains_node(n));
}

#[test]
fn initializers_and_inputs() {
    let mut b = B::new(17);
    let x = b.f("batch,3");
    let w = b.weight(&[3, 4]);
    let c = b.ints(&[1, 2]);
    // An initializer also listed as a graph input: shape known, contents overridable.
    b.g.inputs.push(c);
    let y = b.f("2,3");
    let r = b.node("Reshape", &[y, c], vec![]);
    clean(&mut b);
    assert_eq!(b.t(x), "float[batch,3]");
    assert_eq!(b.t(w), "float[3,4]");
    assert_eq!(b.t(c), "int64[2]");
    assert_eq!(b.t(r), "float[?,?]");
}
