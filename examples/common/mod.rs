//! What the factorization benchmarks share: reading a flag's numeric value and the default
//! model. Included with `#[path]` (a folder without `main.rs` is not an example of its own).

use std::path::PathBuf;

/// The next argument, parsed as the value of `flag`.
pub fn usize_value(args: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<usize> {
    let v = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
    v.parse().map_err(|e| anyhow::anyhow!("{flag} {v}: {e}"))
}

/// `$HCC_MODELS/gpt2-small-random.onnx` (`HCC_MODELS` defaults to `~/.cache/hcc-models`).
pub fn default_model() -> PathBuf {
    let dir = std::env::var_os("HCC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hcc-models")
        });
    dir.join("gpt2-small-random.onnx")
}
