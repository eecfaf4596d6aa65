//! The `hcc` command line: parses flags, calls the library, prints. No logic lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use hcc::dsl::ast::BudgetKind;
use hcc::onnx::{self, ExternalData, SaveOptions};
use hcc::report::inspect;
use hcc::rewrite::engine::Target;

/// hcc: a model-compression compiler for ONNX models.
#[derive(Parser)]
#[command(name = "hcc", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Print no progress or info messages.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Summarise a model: producer, opsets, inputs/outputs, ops, parameters by dtype, the
    /// largest initializers and the weight sharing (shared, duplicated, transposed tensors).
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// How many of the largest initializers to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Print a model in the ONNX textual syntax (large constants as digests).
    Print {
        /// The ONNX model.
        model: PathBuf,
    },
    /// Re-save a model, e.g. into or out of external data.
    Convert {
        /// The ONNX model to read.
        input: PathBuf,
        /// Where to write.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        ext: ExtArgs,
    },
    /// Compile a model: import, run a pipeline of rewrite rules, verify, write the result.
    Compile {
        /// The ONNX model (binary, or `.onnxtxt` text); may come from --config instead.
        model: Option<PathBuf>,
        /// A compile profile (TOML: model, passes, pipeline, ratio, max_bytes, strategy,
        /// output, report, external_data); flags given here override it.
        #[arg(long, value_name = "FILE.toml")]
        config: Option<PathBuf>,
        /// Where to write (default: MODEL with `.hcc.onnx` in place of `.onnx`).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// A pass-language file with the pipeline to run (default: the built-in
        /// passes/default.hcp).
        #[arg(short, long, value_name = "FILE.hcp")]
        passes: Option<PathBuf>,
        /// Which pipeline of the file to run (default: the only one, or the one named `default`).
        #[arg(long)]
        pipeline: Option<String>,
        /// List, per rule, where it fired and why near matches did not.
        #[arg(long)]
        explain: bool,
        /// With --explain: how many near misses to list per rule.
        #[arg(long, default_value_t = 10)]
        max_misses: usize,
        /// Size budget: stored parameters original / compressed (overrides the pipeline's
        /// `budget` line). Used by rules run with `rank = plan`.
        #[arg(long, conflicts_with_all = ["max_bytes", "max_params"])]
        ratio: Option<f64>,
        /// Size budget in stored parameters, e.g. 114329950 (or 114.3M).
        #[arg(long, value_parser = parse_count, conflicts_with = "max_bytes")]
        max_params: Option<u64>,
        /// Size budget in stored bytes, e.g. 200MB or 1.5GiB.
        #[arg(long, value_parser = parse_bytes)]
        max_bytes: Option<u64>,
        /// How the planner compares sites: global (the singular triplets with the most relative
        /// energy per parameter), block (each layer the budget uniform gives it, shared within
        /// by whitened energy), sensitivity (needs --calib: each site's error weighed by what it
        /// measurably costs the model's output, one model run per site), uniform (the same kept
        /// fraction everywhere) or uniform-rank (the same fraction of each full rank), or auto
        /// (the default): with --calib text, compile with uniform, sensitivity, block and global
        /// and keep the one whose outputs on held-out calibration text are closest to the
        /// original's (perplexity, or sentence-embedding cosine); with --calib token ids,
        /// sensitivity; else global. docs/QUALITY.md has the measurements.
        #[arg(long, value_parser = parse_strategy)]
        strategy: Option<StrategyChoice>,
        /// Write the report: JSON (`.json`) or HTML (`.html`).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Skip the fidelity measurement (running both models in-process on seeded inputs).
        #[arg(long)]
        no_fidelity: bool,
        /// Numeric backend: auto (a hardware GPU adapter if there is one, else the CPU), cpu,
        /// or gpu (a software adapter such as Mesa lavapipe if there is no hardware one).
        #[arg(long, value_name = "auto|cpu|gpu")]
        backend: Option<hcc::compute::select::BackendChoice>,
        /// With the GPU backend: only adapters whose name contains this (see `hcc adapters`).
        #[arg(long)]
        adapter: Option<String>,
        /// SVD method of every factorization: auto (the default: exact, or the Gram matrix's
        /// eigendecomposition where the rank is a large part of the short side) or randomized
        /// (the randomized Krylov route at every rank: much faster at high ranks on a GPU, its
        /// errors a little above the optimum; the report gives each one).
        #[arg(long, value_name = "auto|randomized")]
        svd: Option<hcc::compute::SvdMethod>,
        #[command(flatten)]
        calib: Box<CalibArgs>,
        #[command(flatten)]
        ext: ExtArgs,
    },
    /// List the GPU adapters wgpu can see (Vulkan, Metal, DX12) and which one
    /// `--backend auto` takes.
    Adapters {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure fidelity: run the original and the compressed model (tract, in-process) on the
    /// same seeded inputs and compare every output (relative error, cosine, top-1 agreement).
    /// With --text: quality on real text instead — perplexity for causal language models,
    /// sentence-embedding cosine for encoders.
    Eval {
        /// The original ONNX model (its graph inputs define the inputs).
        original: PathBuf,
        /// The compressed model.
        compressed: PathBuf,
        /// Seed of the first input sample (sample k uses seed + k).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Length of symbolic sequence dims (default 32; with --text: tokens per chunk, or the
        /// most tokens per sentence for encoders, default 512).
        #[arg(long)]
        seq_len: Option<usize>,
        /// Size of symbolic batch dims.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Evaluate on this text file: perplexity over non-overlapping chunks of --seq-len
        /// tokens (causal LMs, no special tokens), or the cosine of mean-pooled sentence
        /// embeddings over its non-empty lines (encoders). Needs --tokenizer.
        #[arg(long, requires = "tokenizer")]
        text: Option<PathBuf>,
        /// The HuggingFace tokenizer.json to tokenize --text with.
        #[arg(long, requires = "text")]
        tokenizer: Option<PathBuf>,
        /// With --text: number of chunks (causal LMs); encoders read up to 16 times as many
        /// lines.
        #[arg(long, default_value_t = 8, requires = "text")]
        max_chunks: usize,
        /// With --text, for causal LMs: write the evaluated token ids to this .npy file (int64
        /// [chunks, seq_len]).
        #[arg(long, requires = "text")]
        dump_ids: Option<PathBuf>,
        /// With --text, for causal LMs: greedily generate this many tokens with both models
        /// from the same prompt and show them side by side.
        #[arg(long, default_value_t = 0, requires = "text")]
        generate: usize,
        /// The prompt for --generate (default: the first 16 tokens of --text).
        #[arg(long, requires = "generate")]
        prompt: Option<String>,
        /// With --text, for causal LMs: skip this many chunks at the start of the text (e.g.
        /// the windows a --calib run read, to evaluate on the rest of that file).
        #[arg(long, default_value_t = 0, requires = "text")]
        skip_chunks: usize,
        /// With --text, for encoders: skip this many non-empty lines at the start of the text.
        #[arg(long, default_value_t = 0, requires = "text")]
        skip_lines: usize,
        /// Number of input samples; the metrics are averaged over them.
        #[arg(long, default_value_t = 2)]
        samples: usize,
        /// Vocabulary size, when it cannot be read from the embedding table.
        #[arg(long)]
        vocab: Option<usize>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Parse and check a pass-language file (no model needed).
    Check {
        /// The `.hcp` file.
        file: PathBuf,
    },
}

/// Calibration data: with it, `lowrank(W, rank, whiten = x)` preserves each site's outputs on
/// the data instead of its weights.
#[derive(clap::Args, Clone)]
struct CalibArgs {
    /// Calibration data: a text file (with --tokenizer) or a .npy file of token ids
    /// (int64/int32, [sequences, len] or one stream).
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,
    /// The HuggingFace tokenizer.json for a --calib or --eval-text text.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// After compiling, measure quality on this (held-out) text, as `hcc eval --text` does
    /// (perplexity, or sentence-embedding cosine for encoders; 8 chunks of 512 tokens), and
    /// add it to the report. Needs --tokenizer.
    #[arg(long, value_name = "FILE", requires = "tokenizer")]
    eval_text: Option<PathBuf>,
    /// Tokens per calibration sequence (causal LMs), or the most per line (encoders).
    #[arg(long, default_value_t = 512, requires = "calib")]
    seq_len: usize,
    /// Tokens between the starts of two calibration windows (default: --seq-len).
    #[arg(long, requires = "calib")]
    stride: Option<usize>,
    /// The most calibration windows (encoders: up to this times --seq-len tokens of lines).
    #[arg(long, default_value_t = 32, requires = "calib")]
    max_chunks: usize,
    /// Calibration sequences per model run.
    #[arg(long, default_value_t = 1, requires = "calib")]
    batch_size: usize,
    /// Damping of activation Grams, relative to their mean diagonal.
    #[arg(long, default_value_t = 1e-4, requires = "calib")]
    calib_damp: f64,
    /// Token tables (read by a Gather) are weighted by how often the calibration text reads
    /// each row; every count is raised by this times the mean count, so that rows the text
    /// never read keep part of their weight (0: only the text's frequencies). Default: 0.5 for
    /// encoders (sentence embeddings feel rare tokens more), 1e-4 for causal LMs.
    #[arg(long, requires = "calib")]
    calib_token_damp: Option<f64>,
    /// Where calibration statistics are cached (default: $HCC_CACHE, $XDG_CACHE_HOME/hcc or
    /// ~/.cache/hcc, folder calib/).
    #[arg(long, value_name = "DIR", requires = "calib")]
    calib_cache: Option<PathBuf>,
    /// Do not read or write the calibration cache.
    #[arg(long, requires = "calib")]
    no_calib_cache: bool,
    /// Do not refit the whitened factorizations in sequence. By default, after factorizing,
    /// each one is refitted in model order to the compressed model's own activations on the
    /// calibration data, so that every layer corrects what the layers before it lost (a few
    /// model runs over the data).
    #[arg(long, requires = "calib")]
    no_sequential: bool,
    /// How far the sequential refit reproduces the original layer's outputs (1) rather than
    /// only whitening by the compressed model's inputs (0); between, a blend of the two targets.
    #[arg(long, default_value_t = 0.3, requires = "calib")]
    refit_strength: f64,
    /// Calibration windows (encoders: this times --seq-len tokens of lines) on which the
    /// `sensitivity` strategy measures what each site's error costs the model's output; one
    /// model run per site and window.
    #[arg(long, default_value_t = 1, requires = "calib")]
    sensitivity_windows: usize,
}

impl CalibArgs {
    /// `--calib-token-damp`, or the default for the kind of model the calibration read.
    fn token_damp(&self, c: &hcc::eval::calib::Calibration) -> f64 {
        self.calib_token_damp.unwrap_or(if c.encoder {
            ENCODER_TOKEN_DAMP
        } else {
            CAUSAL_TOKEN_DAMP
        })
    }

    fn options(&self) -> Option<hcc::eval::calib::CalibOptions> {
        let data = self.calib.clone()?;
        let mut o = hcc::eval::calib::CalibOptions::new(data, self.tokenizer.clone());
        o.seq_len = self.seq_len;
        o.stride = self.stride;
        o.max_chunks = self.max_chunks;
        o.batch_size = self.batch_size;
        o.cache_dir = if self.no_calib_cache {
            None
        } else {
            self.calib_cache
                .clone()
                .or_else(hcc::eval::calib::default_cache_dir)
        };
        Some(o)
    }
}

#[derive(clap::Args)]
struct ExtArgs {
    /// Store initializers in a side file next to the output (`OUTPUT.data`).
    #[arg(long)]
    external_data: bool,
    /// Initializers smaller than this many bytes stay inline (with --external-data).
    #[arg(long, default_value_t = 1024, requires = "external_data")]
    external_threshold: usize,
}

impl ExtArgs {
    fn options(&self) -> SaveOptions {
        SaveOptions {
            external_data: self.external_data.then_some(ExternalData {
                location: None,
                threshold: self.external_threshold,
            }),
            ..SaveOptions::default()
        }
    }
}

/// Keep freed memory in the allocator: the factorization allocates and frees many sketch-sized
/// buffers (tens of MB); with glibc's defaults each one is a fresh `mmap` whose pages fault in
/// zeroed, then an `munmap`. Measured on gpt2-small at rank 64: ~0.1 s of system time less.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// `--calib-token-damp` for an encoder's token table (docs/QUALITY.md: all-MiniLM's sentence
/// embeddings are best with 0.2–0.5).
const ENCODER_TOKEN_DAMP: f64 = 0.5;
/// `--calib-token-damp` for a causal LM's: perplexity weighs tokens by their frequency
/// (SmolLM2 at 1.5x: 4.43x with 1e-4, 4.51x with 0.02, 5.63x with 0.5).
const CAUSAL_TOKEN_DAMP: f64 = 1e-4;

fn main() -> ExitCode {
    tune_allocator();
    // Vulkan drivers probe for a Wayland display when wgpu creates an instance, and
    // libwayland prints an error when XDG_RUNTIME_DIR is unset (headless machines, CI). Give it
    // a directory; nothing is written there. Set before any thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("hcc={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(d) = diagnostic(&e) {
                eprintln!("{d}");
                return ExitCode::FAILURE;
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Errors that point into a source text are rendered with the text and a label under the place.
fn diagnostic(e: &anyhow::Error) -> Option<String> {
    let d: &dyn miette::Diagnostic = if let Some(d) = e.downcast_ref::<hcc::dsl::DslError>() {
        d
    } else {
        match e.downcast_ref::<onnx::ImportError>()? {
            onnx::ImportError::Text(t) => t,
            _ => return None,
        }
    };
    let mut out = String::new();
    miette::GraphicalReportHandler::new()
        .render_report(&mut out, d)
        .ok()?;
    Some(out)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json, top } => {
            let m = onnx::load(&model)?;
            let i = inspect::inspect(&m, top);
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print!("{}", inspect::render(&i));
            }
        }
        Command::Print { model } => {
            let bytes = onnx::import::map_file(&model)?;
            let proto = onnx::import::decode(bytes, &model)?;
            println!("{}", onnx::text::print_model(&proto));
        }
        Command::Convert { input, output, ext } => {
            refuse_overwrite_input(&input, &output)?;
            let m = onnx::load(&input)?;
            let stats = onnx::save(&m, &output, &ext.options())?;
            report_saved(&output, &stats, cli.quiet);
        }
        Command::Compile {
            model,
            config,
            output,
            passes,
            pipeline,
            explain,
            max_misses,
            ratio,
            max_bytes,
            max_params,
            strategy,
            report: report_path,
            no_fidelity,
            backend,
            adapter,
            svd,
            calib,
            ext,
        } => {
            let profile = match &config {
                Some(c) => hcc::config::Profile::load(c)?,
                None => hcc::config::Profile::default(),
            };
            let model = model
                .or(profile.model.clone())
                .context("no model given (as an argument or as `model` in --config)")?;
            let output = output.or(profile.output.clone());
            let passes = passes.or(profile.passes.clone());
            let pipeline = pipeline.or(profile.pipeline.clone());
            let ratio = ratio.or(if max_bytes.is_none() {
                profile.ratio
            } else {
                None
            });
            let max_bytes = max_bytes.or(if ratio.is_none() {
                profile.max_bytes
            } else {
                None
            });
            let strategy = match (strategy, &profile.strategy) {
                (Some(s), _) => s,
                (None, Some(s)) => parse_strategy(s).map_err(anyhow::Error::msg)?,
                (None, None) => StrategyChoice::Auto,
            };
            let report_path = report_path.or(profile.report.clone());
            let ext = ExtArgs {
                external_data: ext.external_data || profile.external_data.unwrap_or(false),
                external_threshold: ext.external_threshold,
            };
            let backend = match (backend, &profile.backend) {
                (Some(b), _) => b,
                (None, Some(b)) => b.parse().map_err(anyhow::Error::msg)?,
                (None, None) => hcc::compute::select::BackendChoice::Auto,
            };
            let svd = hcc::compute::SvdOptions {
                method: match (svd, &profile.svd) {
                    (Some(m), _) => m,
                    (None, Some(m)) => m.parse().map_err(anyhow::Error::msg)?,
                    (None, None) => hcc::compute::SvdMethod::Auto,
                },
                ..Default::default()
            };
            if let Some(r) = ratio {
                if !(r.is_finite() && r >= 1.0) {
                    bail!("--ratio must be a number ≥ 1, got {r}");
                }
            }
            let output = output.unwrap_or_else(|| default_output(&model));
            refuse_overwrite_input(&model, &output)?;
            let program = match &passes {
                Some(p) => hcc::dsl::load(p)?,
                None => hcc::dsl::load_str(DEFAULT_HCP, "<built-in>/default.hcp")?,
            };
            let pipe = pick_pipeline(&program, pipeline.as_deref())?;
            let progress = Progress::new(cli.quiet);
            progress.step("loading the model");
            let mut m = onnx::load(&model)?;
            hcc::ir::verify::verify(&m.graph)
                .with_context(|| format!("'{}' does not verify", model.display()))?;
            let before = hcc::rewrite::engine::stored_size(&m.graph);
            let target = match (ratio, max_bytes, &pipe.budget) {
                _ if max_params.is_some() => max_params.map(Target::Params),
                (Some(r), _, _) => Some(Target::Ratio(r)),
                (None, Some(b), _) => Some(Target::Bytes(b)),
                (None, None, Some(b)) => Some(match b.kind {
                    BudgetKind::Ratio(r) => Target::Ratio(r),
                    BudgetKind::Params(p) => Target::Params(p),
                    BudgetKind::Bytes(b) => Target::Bytes(b),
                }),
                (None, None, None) => None,
            };
            progress.step("opening the numeric backend");
            let selected = hcc::compute::select::select(backend, adapter.as_deref())?;
            tracing::info!("backend: {}", selected.reason);
            let calib_opts = calib.options();
            if calib_opts.is_some() && !(calib.calib_damp.is_finite() && calib.calib_damp >= 0.0) {
                bail!(
                    "--calib-damp must be a number ≥ 0, got {}",
                    calib.calib_damp
                );
            }
            if let (Some(_), Some(d)) = (&calib_opts, calib.calib_token_damp) {
                if !(d.is_finite() && d >= 0.0) {
                    bail!("--calib-token-damp must be a number ≥ 0, got {d}");
                }
            }
            let mut calibration: Option<std::sync::Arc<hcc::eval::calib::Calibration>> = None;
            let mut taps: Vec<String> = Vec::new();
            if let Some(opts) = &calib_opts {
                progress.step("surveying the pipeline");
                let mut probe = m.clone();
                taps = hcc::rewrite::Engine::new(&mut probe, &program).whiten_taps(pipe)?;
                drop(probe);
                if taps.is_empty() {
                    tracing::warn!(
                        "pipeline '{}' makes no `lowrank(…, whiten = x)` call: --calib has no effect",
                        pipe.name.name
                    );
                } else {
                    progress.step(&format!("calibration: {} activations", taps.len()));
                    let c =
                        hcc::eval::calib::collect(&model, &taps, opts, progress.sink().as_ref())?;
                    tracing::info!(
                        "calibration: {} sequences, {} tokens, {:.1} s{}",
                        c.sequences,
                        c.tokens,
                        c.seconds,
                        if c.cached { " (cached)" } else { "" }
                    );
                    calibration = Some(std::sync::Arc::new(c));
                }
            }
            // The strategies to try: `auto` compares them on the calibration text.
            let calib_text = calib_opts
                .as_ref()
                .filter(|o| o.tokenizer.is_some() && o.data.extension().is_none_or(|e| e != "npy"));
            use hcc::plan::Strategy as S;
            // Each candidate: a strategy, and whether quantizable token tables are cut first
            // (their exchange rates scaled by TABLES_FIRST; only where the model has such
            // tables).
            let candidates: Vec<(S, bool)> = match strategy {
                StrategyChoice::Fixed(s) => vec![(s, false)],
                // Uniform first: its factorizations are the sensitivity probe.
                StrategyChoice::Auto if calibration.is_some() && calib_text.is_some() => vec![
                    (S::Uniform, false),
                    (S::Sensitivity, false),
                    (S::Sensitivity, true),
                    (S::Block, false),
                    (S::Global, false),
                ],
                StrategyChoice::Auto if calibration.is_some() => vec![(S::Sensitivity, false)],
                StrategyChoice::Auto => vec![(S::Global, false)],
            };
            let mut quantizable: Vec<String> = Vec::new();
            // The `sensitivity` strategy weighs every site by what its error costs the model's
            // output, measured with the sites of the uniform plan at the same budget (the
            // uniform candidate's, when auto compiles one first).
            let mut measured: Option<hcc::eval::sensitivity::SensitivityReport> = None;
            // Backend, progress and calibration of every engine that plans.
            let pq_cache = std::sync::Arc::new(hcc::rewrite::eval::PqCache::default());
            let configure = |engine: &mut hcc::rewrite::Engine| {
                engine.set_backend(selected.backend.clone());
                engine.set_svd(svd.clone());
                engine.set_pq_cache(pq_cache.clone());
                if let Some(sink) = progress.sink() {
                    engine.set_progress(sink);
                }
                if let Some(c) = &calibration {
                    engine.set_whitening(hcc::rewrite::eval::WhitenOptions {
                        calib: c.clone(),
                        damp: calib.calib_damp,
                        token_damp: calib.token_damp(c),
                    });
                }
            };
            let mut uniform_sites: Option<Vec<hcc::rewrite::engine::Factorization>> = None;
            let mut trials: Vec<hcc::report::compile::StrategyTrial> = Vec::new();
            // The original's side of the scoring runs once for all candidates.
            let original_runs = std::sync::Arc::new(hcc::eval::OriginalRuns::default());
            let mut best: Option<(f64, hcc::ir::Model, _, _, _, usize)> = None;
            for (i, &(s, tables_first)) in candidates.iter().enumerate() {
                if tables_first && quantizable.is_empty() {
                    continue;
                }
                if s == S::Sensitivity && calib.sensitivity_windows == 0 {
                    bail!("--sensitivity-windows must be at least 1");
                }
                if s == S::Sensitivity && measured.is_none() {
                    let (Some(opts), Some(_)) = (&calib_opts, &calibration) else {
                        bail!("the sensitivity strategy needs calibration data (--calib)");
                    };
                    let sites = match uniform_sites.take() {
                        Some(sites) => sites,
                        None => {
                            progress.step("planning (uniform, to probe sensitivities)");
                            let mut probe = m.clone();
                            let mut engine = hcc::rewrite::Engine::new(&mut probe, &program);
                            configure(&mut engine);
                            engine.plan_pipeline(pipe, target, S::Uniform)?;
                            engine.factorizations()
                        }
                    };
                    progress.step("measuring sensitivities");
                    let mut o = opts.clone();
                    o.max_chunks = calib.sensitivity_windows;
                    let r = hcc::eval::sensitivity::measure(
                        &model,
                        &m,
                        &sites,
                        &hcc::eval::sensitivity::SensitivityOptions { calib: o },
                        progress.sink().as_ref(),
                    )?;
                    tracing::info!(
                        "sensitivity: {} sites on {} tokens, {:.1} s",
                        r.sites.len(),
                        r.tokens,
                        r.seconds
                    );
                    for (name, why) in &r.skipped {
                        tracing::warn!(
                            "sensitivity: {name} not measured ({why}): it keeps its uniform rank"
                        );
                    }
                    measured = Some(r);
                }
                let mut mi = if i + 1 == candidates.len() {
                    std::mem::take(&mut m)
                } else {
                    m.clone()
                };
                progress.step(&format!("planning ({s:?} strategy)"));
                let mut engine = hcc::rewrite::Engine::new(&mut mi, &program);
                configure(&mut engine);
                if let (S::Sensitivity, Some(w)) = (s, &measured) {
                    let mut weights = w.weights();
                    if tables_first {
                        for name in &quantizable {
                            if let Some(x) = weights.get_mut(name) {
                                *x *= TABLES_FIRST;
                            }
                        }
                    }
                    engine.set_sensitivity(weights);
                }
                let plan = engine.plan_pipeline(pipe, target, s)?;
                if s == S::Uniform && candidates.contains(&(S::Sensitivity, false)) {
                    uniform_sites = Some(engine.factorizations());
                }
                if i == 0 {
                    quantizable = engine.quantizable_tables();
                }
                progress.step(&format!("pipeline '{}'", pipe.name.name));
                let stages = engine.run_pipeline(pipe)?;
                let refit_sites = engine.whitened_factorizations();
                drop(engine);

                let (Some(opts), true) = (calib_text, candidates.len() > 1) else {
                    best = Some((0.0, mi, plan, stages, refit_sites, trials.len()));
                    break;
                };
                // Score on the calibration text (SCORE_WINDOWS windows, or 16 lines per window).
                progress.step(&format!("scoring the {s:?} plan on the calibration text"));
                let name = output
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let trial = output.with_file_name(format!(".{name}.trial{i}.onnx"));
                onnx::save(&mi, &trial, &SaveOptions::default())?;
                let mut t = hcc::eval::TextOptions::new(
                    &opts.data,
                    opts.tokenizer.clone().unwrap_or_default(),
                );
                t.seq_len = opts.seq_len;
                t.max_chunks = SCORE_WINDOWS;
                t.original_runs = Some(original_runs.clone());
                // Held out: the windows (or lines) after those the statistics came from, so
                // that a plan is not scored on the data it was whitened with. A text with
                // nothing left after them is scored on its first windows.
                let seen = calibration.as_ref().map_or(0, |c| c.sequences);
                let stride = opts.stride.unwrap_or(opts.seq_len).max(1);
                let read = seen.saturating_sub(1) * stride + opts.seq_len;
                t.skip_chunks = if seen > 0 {
                    read.div_ceil(opts.seq_len.max(1))
                } else {
                    0
                };
                t.skip_lines = seen;
                let mut held_out = seen > 0;
                let mut scored = hcc::eval::text_eval(&model, &trial, &t);
                if held_out && matches!(scored, Err(hcc::eval::EvalError::Text { .. })) {
                    tracing::warn!(
                        "the calibration text has nothing after the {seen} calibration \
                         sequences: scoring the {s:?} plan on its first windows"
                    );
                    (t.skip_chunks, t.skip_lines, held_out) = (0, 0, false);
                    scored = hcc::eval::text_eval(&model, &trial, &t);
                }
                let _ = std::fs::remove_file(&trial);
                let r = scored?;
                let (metric, value, score) = match (r.ratio, r.cosine_mean) {
                    (Some(x), _) => ("perplexity ratio", x, x),
                    (None, Some(c)) => ("sentence-embedding cosine", c, 1.0 - c),
                    _ => bail!("no score for the {s:?} plan"),
                };
                let what = if tables_first { " (tables first)" } else { "" };
                tracing::info!("strategy {s:?}{what}: {metric} {value:.4} on the calibration text");
                trials.push(hcc::report::compile::StrategyTrial {
                    strategy: if tables_first {
                        format!("{} (tables first)", s.name())
                    } else {
                        s.name().into()
                    },
                    metric: metric.into(),
                    value,
                    chosen: false,
                    held_out,
                });
                if best.as_ref().is_none_or(|b| score < b.0) {
                    best = Some((score, mi, plan, stages, refit_sites, trials.len() - 1));
                }
            }
            let Some((_, best_model, plan, stages, refit_sites, chosen_trial)) = best else {
                bail!("no strategy to plan with");
            };
            m = best_model;
            // The kept plan's factorizations refitted in model order (strategies are compared
            // before: a refit per candidate would cost a few model runs each).
            let mut refit = None;
            if let (false, Some(opts), false) =
                (calib.no_sequential, &calib_opts, refit_sites.is_empty())
            {
                progress.step("sequential refit");
                let original = onnx::load(&model)?;
                let r = hcc::eval::sequential::refit(
                    &model,
                    &original,
                    &mut m,
                    &refit_sites,
                    selected.backend.as_ref(),
                    &hcc::eval::sequential::RefitOptions {
                        calib: opts.clone(),
                        damp: calib.calib_damp,
                        strength: calib.refit_strength,
                        known: calibration.clone(),
                        svd: svd.clone(),
                    },
                    progress.sink().as_ref(),
                )?;
                tracing::info!(
                    "sequential refit: {} sites in {} blocks, {:.1} s",
                    r.sites.len(),
                    r.blocks,
                    r.seconds
                );
                for (name, why) in &r.skipped {
                    tracing::warn!("refit left {name} as it was: {why}");
                }
                refit = Some(r);
            }
            if let Some(t) = trials.get_mut(chosen_trial) {
                t.chosen = true;
            }
            progress.step("writing the model");
            let stats = onnx::save(&m, &output, &ext.options())?;
            if explain {
                print!("{}", hcc::rewrite::render_explain(&stages, max_misses));
            }
            let after = hcc::rewrite::engine::stored_size(&m.graph);
            // Written and measured: the graph is not needed again, and freeing it piece by piece
            // right before the process exits is work for nothing.
            std::mem::forget(m);
            let file_before = file_size(&model);
            let file_after = stats.model_bytes + stats.external_bytes;
            let has_plan = plan.sites.iter().any(|s| s.rank.is_some());
            let chosen = plan.strategy;
            let mut report = hcc::report::compile::CompileReport::new(
                model.display().to_string(),
                output.display().to_string(),
                stages,
                has_plan.then_some(plan),
                before,
                after,
                file_before,
                file_after,
            );
            report.backend = selected.reason.clone();
            report.svd = svd.method.name().to_string();
            report.strategy_trials = trials;
            if chosen == S::Sensitivity {
                report.sensitivity = measured;
            }
            if let Some(r) = refit {
                report.set_refit(r);
            }
            if let Some(t) = target {
                let goal = t.params(before.0, before.1);
                if after.0 > goal {
                    tracing::warn!(
                        "the budget asked for at most {goal} parameters; the model stores {}",
                        after.0
                    );
                }
            }
            if let Some(c) = &calibration {
                report.calibration = Some(hcc::report::compile::CalibrationReport {
                    data: c.data.display().to_string(),
                    sequences: c.sequences,
                    tokens: c.tokens,
                    activations: taps.len(),
                    damp: calib.calib_damp,
                    token_damp: calib.token_damp(c),
                    counted_tokens: c.counted,
                    seconds: c.seconds,
                    cached: c.cached,
                });
            }
            let changed = report.stages.stages.iter().any(|s| !s.fired.is_empty());
            if let (Some(text), Some(tok), true) = (&calib.eval_text, &calib.tokenizer, changed) {
                progress.step("measuring quality on the text (original vs compressed, tract)");
                let mut opts = hcc::eval::TextOptions::new(text, tok);
                opts.generate = 24;
                let t = hcc::eval::text_eval(&model, &output, &opts)?;
                report.text_eval = Some(serde_json::to_value(&t)?);
            }
            if !no_fidelity && changed {
                progress.step("measuring fidelity (original vs compressed, tract)");
                match hcc::eval::fidelity(&model, &output, &hcc::eval::FidelityOptions::default()) {
                    Ok(f) => report.fidelity = Some(serde_json::to_value(&f)?),
                    Err(e) => tracing::warn!("fidelity not measured: {e}"),
                }
            }
            progress.finish();
            if !cli.quiet {
                eprint!("{}", report.render(12));
            }
            if let Some(path) = &report_path {
                hcc::report::write_report(&report, path)?;
            }
            report_saved(&output, &stats, cli.quiet);
        }
        Command::Eval {
            original,
            compressed,
            seed,
            seq_len,
            batch,
            samples,
            vocab,
            json,
            text,
            tokenizer,
            max_chunks,
            dump_ids,
            generate,
            prompt,
            skip_chunks,
            skip_lines,
        } => {
            if let (Some(text), Some(tokenizer)) = (text, tokenizer) {
                let opts = hcc::eval::TextOptions {
                    text,
                    tokenizer,
                    seq_len: seq_len.unwrap_or(512),
                    max_chunks,
                    dump_ids,
                    generate,
                    prompt,
                    skip_chunks,
                    skip_lines,
                    original_runs: None,
                };
                let r = hcc::eval::text_eval(&original, &compressed, &opts)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{}", hcc::eval::render_text(&r));
                }
                return Ok(());
            }
            let opts = hcc::eval::FidelityOptions {
                seed,
                batch,
                seq_len: seq_len.unwrap_or(32),
                samples,
                vocab,
            };
            let f = hcc::eval::fidelity(&original, &compressed, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                print!("{}", hcc::eval::render(&f));
            }
        }
        Command::Adapters { json } => {
            let adapters = hcc::compute::Gpu::adapters();
            let auto =
                hcc::compute::select::select(hcc::compute::select::BackendChoice::Auto, None)?;
            if json {
                let list: Vec<serde_json::Value> = adapters
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "name": a.name,
                            "backend": a.backend,
                            "device_type": a.device_type,
                            "driver": a.driver,
                            "software": a.software,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "adapters": list,
                        "auto": auto.reason,
                    }))?
                );
            } else {
                if adapters.is_empty() {
                    println!("no GPU adapters (wgpu found no Vulkan, Metal or DX12 device)");
                }
                for a in &adapters {
                    println!(
                        "{:<40} {:<7} {:<10} {}{}",
                        a.name,
                        a.backend,
                        a.device_type,
                        a.driver,
                        if a.software { "  (software)" } else { "" }
                    );
                }
                println!("--backend auto takes: {}", auto.reason);
            }
        }
        Command::Check { file } => {
            let program = hcc::dsl::load(&file)?;
            if !cli.quiet {
                let names: Vec<&str> = program
                    .pipelines
                    .iter()
                    .map(|p| p.name.name.as_str())
                    .collect();
                println!(
                    "{}: ok ({} rules, {} pipelines{})",
                    file.display(),
                    program.rules.len(),
                    names.len(),
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", names.join(", "))
                    }
                );
            }
        }
    }
    Ok(())
}

/// `--strategy`: a planner strategy, or `auto`.
#[derive(Clone, Copy, Debug)]
enum StrategyChoice {
    Auto,
    Fixed(hcc::plan::Strategy),
}

/// Windows of the calibration text (16 lines each for encoders) that `--strategy auto` scores
/// every plan on. Two windows of 512 tokens flipped SmolLM2's choice at 1.5x against what 8, 16
/// and the held-out Macbeth agree on (docs/QUALITY.md).
const SCORE_WINDOWS: usize = 8;

/// How much cheaper `auto`'s "tables first" candidate makes the error of a quantizable token
/// table (its measured exchange rate times this): the planner then takes the savings from the
/// tables before any linear layer. Measured on all-MiniLM (docs/QUALITY.md): the sensitivity
/// rates favour cutting linear layers more than their held-out effect warrants.
const TABLES_FIRST: f64 = 1e-3;

fn parse_strategy(s: &str) -> Result<StrategyChoice, String> {
    match s {
        "auto" => Ok(StrategyChoice::Auto),
        other => other
            .parse()
            .map(StrategyChoice::Fixed)
            .map_err(|e: String| format!("{e}, or auto")),
    }
}

/// A count: digits, optionally with a K/M/G suffix (powers of 1000), e.g. `114.3M`.
fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        Some('g' | 'G') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a count (e.g. 114329950 or 114.3M)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("'{s}' must be a positive count"));
    }
    Ok((v * mult).round() as u64)
}

fn file_size(model: &Path) -> u64 {
    std::fs::metadata(model).map(|m| m.len()).unwrap_or(0)
}

/// `200MB`, `1.5GiB`, `123456`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let x: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 200MB, 1.5GiB)"))?;
    let unit = unit.trim();
    let mult = hcc::dsl::ast::byte_unit(unit)
        .ok_or_else(|| format!("unknown size unit '{unit}' (B, KB, MB, GB, KiB, MiB, GiB)"))?;
    if !(x.is_finite() && x > 0.0) {
        return Err(format!("'{s}' is not a positive size"));
    }
    Ok((x * mult) as u64)
}

/// The progress of a compile on stderr (hidden with `-q`, and when stderr is not a terminal):
/// a spinner naming the current step, which becomes a bar counting units (matrices factorized,
/// candidate sites of a rule) while the engine reports a phase. Each step's wall time is logged
/// at debug level (`-vv`).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    step: std::cell::RefCell<Option<(String, std::time::Instant)>>,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let bar = (!quiet).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            step: std::cell::RefCell::new(None),
        }
    }

    fn spinner_style() -> indicatif::ProgressStyle {
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
    }

    fn step(&self, msg: &str) {
        self.end_step();
        if let Some(b) = &self.bar {
            b.set_style(Self::spinner_style());
            b.set_message(msg.to_string());
        }
        *self.step.borrow_mut() = Some((msg.to_string(), std::time::Instant::now()));
    }

    /// A sink for the engine's progress events: each phase shows as a bar under the current
    /// step's name.
    fn sink(&self) -> Option<hcc::rewrite::ProgressSink> {
        let bar = self.bar.clone()?;
        let step = self
            .step
            .borrow()
            .as_ref()
            .map(|(m, _)| m.clone())
            .unwrap_or_default();
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} {prefix}: {msg} [{bar:30}] {pos}/{len} ({elapsed})",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        Some(std::sync::Arc::new(
            move |e: hcc::rewrite::Progress<'_>| match e {
                hcc::rewrite::Progress::Begin { phase, total } => {
                    bar.set_prefix(step.clone());
                    bar.set_message(phase.to_string());
                    bar.set_length(total as u64);
                    bar.set_position(0);
                    bar.set_style(style.clone());
                }
                hcc::rewrite::Progress::Advance(n) => bar.inc(n as u64),
            },
        ))
    }

    fn end_step(&self) {
        if let Some((msg, t)) = self.step.borrow_mut().take() {
            tracing::debug!("{msg}: {:.3} s", t.elapsed().as_secs_f64());
        }
    }

    fn finish(&self) {
        self.end_step();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The built-in default pipeline.
const DEFAULT_HCP: &str = include_str!("../passes/default.hcp");

fn pick_pipeline<'p>(
    program: &'p hcc::dsl::Program,
    name: Option<&str>,
) -> Result<&'p hcc::dsl::ast::Pipeline> {
    let names: Vec<&str> = program
        .pipelines
        .iter()
        .map(|p| p.name.name.as_str())
        .collect();
    match name {
        Some(n) => program
            .pipeline(n)
            .with_context(|| format!("no pipeline '{n}' (the file has: {})", names.join(", "))),
        None => match program.pipelines.as_slice() {
            [only] => Ok(only),
            [] => bail!("the pass file defines no pipeline"),
            _ => program.pipeline("default").with_context(|| {
                format!(
                    "several pipelines ({}): choose one with --pipeline",
                    names.join(", ")
                )
            }),
        },
    }
}

fn default_output(model: &Path) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    model.with_file_name(format!("{stem}.hcc.onnx"))
}

/// Writing over the input while its weights are memory-mapped would corrupt what we read.
fn refuse_overwrite_input(input: &Path, output: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            bail!(
                "output '{}' is the input file; write to another path",
                output.display()
            );
        }
    }
    Ok(())
}

fn report_saved(path: &Path, stats: &onnx::SaveStats, quiet: bool) {
    if quiet {
        return;
    }
    match &stats.external_path {
        Some(p) => eprintln!(
            "wrote {} ({}) + {} ({})",
            path.display(),
            inspect::human_bytes(stats.model_bytes),
            p.display(),
            inspect::human_bytes(stats.external_bytes)
        ),
        None => eprintln!(
            "wrote {} ({})",
            path.display(),
            inspect::human_bytes(stats.model_bytes)
        ),
    }
}
