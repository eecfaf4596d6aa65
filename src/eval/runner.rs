//! Running an ONNX model in-process with tract, for concrete input shapes.

use std::path::Path;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::math::{mul, square, PowConst};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::optim::CONST_FOLD_MEM_BUDGET;

use super::inputs::{InputData, InputSpec, InputTensor};
use crate::ir::DType;

/// A model loaded, typed for the planned input shapes, optimized and ready to run.
pub(crate) struct Runner {
    plan: Arc<TypedSimplePlan>,
    /// For each tract input, in tract's order: the index into the original's input specs.
    feed: Vec<usize>,
}

/// One output of one run, as `f64`s.
pub(crate) struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// A failure: the stage and tract's message (the caller adds the file name).
pub(crate) struct RunError {
    pub stage: &'static str,
    pub detail: String,
}

fn fail(stage: &'static str) -> impl Fn(TractError) -> RunError {
    move |e| RunError {
        stage,
        detail: format!("{e:#}"),
    }
}

/// tract's type for an element type the inputs may have.
fn datum_type(d: DType) -> Option<DatumType> {
    Some(match d {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::F16 => DatumType::F16,
        DType::I64 => DatumType::I64,
        DType::I32 => DatumType::I32,
        DType::I16 => DatumType::I16,
        DType::I8 => DatumType::I8,
        DType::U64 => DatumType::U64,
        DType::U32 => DatumType::U32,
        DType::U16 => DatumType::U16,
        DType::U8 => DatumType::U8,
        DType::Bool => DatumType::Bool,
        _ => return None,
    })
}

impl Runner {
    /// Loads `path` with tract, with the input facts of `specs` (matched by name), and
    /// optimizes it. Returns the runner and the milliseconds spent.
    pub fn load(path: &Path, specs: &[InputSpec]) -> Result<(Runner, f64), RunError> {
        Self::load_tapped(path, specs, None)
    }

    /// As [`Runner::load`], but with `taps` (values of the model, by their ONNX names) as the
    /// outputs instead of the graph's: what is computed only for other outputs is not run.
    pub fn load_tapped(
        path: &Path,
        specs: &[InputSpec],
        taps: Option<&[String]>,
    ) -> Result<(Runner, f64), RunError> {
        let start = Instant::now();
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .with_ignore_output_shapes(true)
            .model_for_path(path)
            .map_err(fail("load the model"))?;
        Self::prepare(model, specs, taps, start)
    }

    /// As [`Runner::load_tapped`], from an encoded model in memory (a part of a model cut
    /// out by [`crate::eval::sequential`]).
    pub fn load_bytes(
        bytes: &[u8],
        specs: &[InputSpec],
        taps: Option<&[String]>,
    ) -> Result<(Runner, f64), RunError> {
        let start = Instant::now();
        let mut reader = std::io::Cursor::new(bytes);
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .with_ignore_output_shapes(true)
            .model_for_read(&mut reader)
            .map_err(fail("load the model"))?;
        Self::prepare(model, specs, taps, start)
    }

    fn prepare(
        mut model: InferenceModel,
        specs: &[InputSpec],
        taps: Option<&[String]>,
        start: Instant,
    ) -> Result<(Runner, f64), RunError> {
        let outlets = model
            .input_outlets()
            .map_err(fail("list the inputs"))?
            .to_vec();
        let mut feed = Vec::with_capacity(outlets.len());
        for (ix, outlet) in outlets.iter().enumerate() {
            let name = &model.node(outlet.node).name;
            let Some(k) = specs.iter().position(|s| &s.name == name) else {
                return Err(RunError {
                    stage: "match the inputs",
                    detail: format!("input '{name}' is not an input of the original model"),
                });
            };
            let spec = &specs[k];
            let dt = datum_type(spec.dtype).ok_or_else(|| RunError {
                stage: "match the inputs",
                detail: format!("input '{name}' has element type {}", spec.dtype),
            })?;
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, spec.shape.clone()))
                .map_err(fail("set the input shapes"))?;
            feed.push(k);
        }
        if let Some(taps) = taps {
            let outlets = taps
                .iter()
                .map(|name| {
                    // A graph input is a source node of that name.
                    let source = model
                        .node_id_by_name(name)
                        .ok()
                        .filter(|&id| {
                            model
                                .input_outlets()
                                .is_ok_and(|i| i.iter().any(|o| o.node == id))
                        })
                        .map(|id| OutletId::new(id, 0));
                    model
                        .find_outlet_label(name)
                        .or(source)
                        .ok_or_else(|| RunError {
                            stage: "find the calibrated values",
                            detail: format!("'{name}' is not a value of this model"),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            model
                .select_output_outlets(&outlets)
                .map_err(fail("select the calibrated values"))?;
        }
        let typed = model
            .into_typed()
            .map_err(fail("type the model"))?
            .into_decluttered()
            .map_err(fail("declutter the model"))?;
        let typed = cube_as_products(typed).map_err(fail("rewrite Pow(x, 3)"))?;
        let typed = typed.into_optimized().map_err(fail("optimize the model"))?;
        let typed = fold_constants(typed).map_err(fail("fold constants"))?;
        let plan = TypedSimplePlan::new(typed).map_err(fail("plan the model"))?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        Ok((Runner { plan, feed }, ms))
    }

    /// Runs once on `inputs` (the original's input tensors, in spec order). Returns the outputs
    /// in graph order and the milliseconds the run took (conversions excluded).
    pub fn run(&self, inputs: &[InputTensor]) -> Result<(Vec<Output>, f64), RunError> {
        let feeds = self.feeds(inputs)?;
        let start = Instant::now();
        let outputs = self.plan.run(feeds).map_err(fail("run the model"))?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let outputs = outputs
            .iter()
            .map(|t| {
                let shape = t.shape().to_vec();
                let t64 = t.cast_to::<f64>()?;
                let view = t64.try_as_plain_ram()?;
                let data = view.as_slice::<f64>()?.to_vec();
                Ok(Output { shape, data })
            })
            .collect::<TractResult<Vec<_>>>()
            .map_err(fail("read the outputs as numbers"))?;
        Ok((outputs, ms))
    }
}

impl Runner {
    /// tract's inputs, in its order, from the original's input tensors.
    fn feeds(&self, inputs: &[InputTensor]) -> Result<TVec<TValue>, RunError> {
        self.feed
            .iter()
            .map(|&k| {
                to_tract(&inputs[k])
                    .map(TValue::from)
                    .map_err(fail("build the inputs"))
            })
            .collect()
    }
}

/// Outputs as f32: (shape, elements) each.
pub(crate) type F32Outputs = Vec<(Vec<usize>, Vec<f32>)>;

/// Copies a run's outputs out as f32.
fn as_f32(outputs: &[TValue]) -> TractResult<F32Outputs> {
    outputs
        .iter()
        .map(|t| {
            let shape = t.shape().to_vec();
            let t32 = t.cast_to::<f32>()?;
            let view = t32.try_as_plain_ram()?;
            Ok((shape, view.as_slice::<f32>()?.to_vec()))
        })
        .collect()
}

impl Runner {
    /// Runs once on `inputs` and returns every output as f32 (shape, elements): for taps, which
    /// are float activations.
    pub fn run_f32(&self, inputs: &[InputTensor]) -> Result<F32Outputs, RunError> {
        let feeds = self.feeds(inputs)?;
        let outputs = self.plan.run(feeds).map_err(fail("run the model"))?;
        as_f32(&outputs).map_err(fail("read the calibrated values"))
    }
}

/// f32 inputs fed after the original's (see [`Runner::run_f32_extra`]): zeros, one tensor per
/// distinct shape, shared by every run (a feed holds a reference, not a copy).
pub(crate) struct ExtraInputs {
    shapes: Vec<Vec<usize>>,
    zeros: Vec<TValue>,
    /// Per extra input, its zero tensor in `zeros`.
    of: Vec<usize>,
}

impl ExtraInputs {
    /// Zero inputs of the given shapes.
    pub fn zeros(shapes: &[Vec<usize>]) -> Result<ExtraInputs, RunError> {
        let mut distinct: Vec<Vec<usize>> = Vec::new();
        let mut zeros = Vec::new();
        let mut of = Vec::with_capacity(shapes.len());
        for s in shapes {
            let i = match distinct.iter().position(|d| d == s) {
                Some(i) => i,
                None => {
                    distinct.push(s.clone());
                    let z = Tensor::zero::<f32>(s).map_err(fail("build the inputs"))?;
                    zeros.push(TValue::from(z));
                    distinct.len() - 1
                }
            };
            of.push(i);
        }
        Ok(ExtraInputs {
            shapes: shapes.to_vec(),
            zeros,
            of,
        })
    }
}

impl Runner {
    /// Runs once: spec indices below `inputs.len()` are fed from `inputs`, index
    /// `inputs.len() + j` is extra input `j`: zeros, except that `(j, data)` in `given` feeds
    /// `data` there. Returns every output as f32 (shape, elements).
    pub fn run_f32_extra(
        &self,
        inputs: &[InputTensor],
        extra: &ExtraInputs,
        given: &[(usize, &[f32])],
    ) -> Result<F32Outputs, RunError> {
        let base = inputs.len();
        let feeds = self
            .feed
            .iter()
            .map(|&k| {
                if k < base {
                    return to_tract(&inputs[k]).map(TValue::from);
                }
                let j = k - base;
                match given.iter().find(|(o, _)| *o == j) {
                    Some((_, data)) => Tensor::from_shape(&extra.shapes[j], data).map(TValue::from),
                    None => extra
                        .of
                        .get(j)
                        .map(|&z| extra.zeros[z].clone())
                        .ok_or_else(|| TractError::msg(format!("no extra input {j}"))),
                }
            })
            .collect::<TractResult<TVec<TValue>>>()
            .map_err(fail("build the inputs"))?;
        let outputs = self.plan.run(feeds).map_err(fail("run the model"))?;
        as_f32(&outputs).map_err(fail("read the outputs"))
    }
}

fn to_tract(input: &InputTensor) -> TractResult<Tensor> {
    let shape = &input.spec.shape;
    let t = match &input.data {
        InputData::Int(v) => Tensor::from_shape(shape, v)?,
        InputData::Float(v) => Tensor::from_shape(shape, v)?,
        InputData::Bool(v) => Tensor::from_shape(shape, v)?,
    };
    let dt = datum_type(input.spec.dtype)
        .ok_or_else(|| TractError::msg(format!("element type {}", input.spec.dtype)))?;
    Ok(t.cast_to_dt(dt)?.into_owned())
}

/// Replaces `x^3` (tract runs it as a scalar `powf` per element) by `x · x²`, which runs
/// vectorized: GPT-2's GELU spends most of its time there otherwise.
fn cube_as_products(mut model: TypedModel) -> TractResult<TypedModel> {
    let cubes: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| {
            n.op_as::<ElementWiseOp>()
                .and_then(|ew| ew.0.downcast_ref::<PowConst>())
                .is_some_and(|p| p.exponent == 3.0)
        })
        .map(|n| n.id)
        .collect();
    if cubes.is_empty() {
        return Ok(model);
    }
    for id in cubes {
        let node = model.node(id);
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(&model, node.inputs[0])?;
        let sq = patch.wire_node(format!("{}.square", node.name), square(), &[x])?[0];
        let y: TypedBinOp = mul();
        let cube = patch.wire_node(format!("{}.cube", node.name), y, &[x, sq])?[0];
        patch.shunt_outside(&model, id.into(), cube)?;
        patch.apply(&mut model)?;
    }
    model.into_decluttered()
}

/// Folds every stateless node whose inputs are all constant into a constant, also when an
/// input is a large constant read elsewhere too (tract keeps those, so a tied embedding would be
/// re-packed for the LM head on every run). A fold may not grow memory past the larger of its
/// inputs' size and tract's own allowance.
fn fold_constants(mut model: TypedModel) -> TractResult<TypedModel> {
    // Nodes already folded (they stay, unread, until `compact`) or that cannot be.
    let mut done = std::collections::HashSet::new();
    loop {
        let mut patch = None;
        for node in model.nodes() {
            if node.op_is::<Const>()
                || node.op_is::<TypedSource>()
                || node.inputs.is_empty()
                || !done.insert(node.id)
            {
                continue;
            }
            let facts = model.node_input_facts(node.id)?;
            let Some(values) = facts
                .iter()
                .map(|f| f.konst.clone().map(|k| k.into_tvalue()))
                .collect::<Option<TVec<TValue>>>()
            else {
                continue;
            };
            let input_mem: u64 = facts
                .iter()
                .map(|f| f.mem_size().as_i64().unwrap_or(i64::MAX) as u64)
                .sum();
            let Ok(Some(outputs)) = node.op.eval_out_of_plan(values) else {
                continue;
            };
            let output_mem: u64 = outputs
                .iter()
                .map(|t| (t.datum_type().size_of() * t.volume()) as u64)
                .sum();
            if output_mem > input_mem.max(CONST_FOLD_MEM_BUDGET) {
                continue;
            }
            let mut p = TypedModelPatch::default();
            for (ix, output) in outputs.into_iter().enumerate() {
                let outlet = OutletId::new(node.id, ix);
                let exotic = model.outlet_fact(outlet)?.exotic_fact.clone();
                let konst = Const::new_with_opt_exotic_fact(output.into_arc_tensor(), exotic)?;
                let wire = p.wire_node(format!("{}.folded{ix}", node.name), konst, &[])?[0];
                p.shunt_outside(&model, outlet, wire)?;
            }
            patch = Some(p);
            break;
        }
        match patch {
            Some(p) => p.apply(&mut model)?,
            None => break,
        }
    }
    model.compact()?;
    Ok(model)
}
