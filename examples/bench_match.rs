//! Benchmark of the matcher: match every rule of the standard library at every candidate site
//! of a model (patterns only: no clause evaluation, no rewriting), repeated, and report the
//! median. Usage: cargo run --release --example bench_match -- MODEL [REPEATS]
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: bench_match MODEL [REPEATS]")?;
    let repeats: usize = args.get(2).map(|r| r.parse()).transpose()?.unwrap_or(21);
    let t = Instant::now();
    let mut model = hcc::onnx::load(std::path::Path::new(path))?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let program = hcc::dsl::builtin_std()?;
    let nodes = model.graph.node_count();
    let inits = model.graph.initializers().len();
    let engine = hcc::rewrite::Engine::new(&mut model, &program);
    let mut times = Vec::new();
    let mut per_rule = Vec::new();
    for _ in 0..repeats {
        per_rule.clear();
        let t = Instant::now();
        for rule in &program.rules {
            let (c, m) = engine.match_all(rule);
            per_rule.push((rule.name.name.clone(), c, m));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("model {path}: {nodes} nodes, {inits} initializers (load {load_ms:.1} ms)");
    for (r, c, m) in &per_rule {
        println!("  {r:<16} {c:>5} candidate sites {m:>5} matches");
    }
    println!(
        "match all {} std rules: median {:.2} ms, min {:.2} ms, max {:.2} ms over {repeats} runs",
        program.rules.len(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}
