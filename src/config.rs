//! Compile profiles: TOML files (`configs/*.toml`) naming a model, a pipeline, a budget and the
//! outputs, used with `hcc compile --config`. Flags given on the command line override them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A compile profile. Relative paths are relative to the profile's folder; `$HCC_MODELS` and
/// `~` at the start of a path are expanded.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The model to compile.
    pub model: Option<PathBuf>,
    /// The pass file (default: the built-in default pipeline).
    pub passes: Option<PathBuf>,
    /// The pipeline in that file.
    pub pipeline: Option<String>,
    /// Budget: stored parameters original / compressed.
    pub ratio: Option<f64>,
    /// Budget: stored bytes.
    pub max_bytes: Option<u64>,
    /// Planner strategy: "uniform" or "global".
    pub strategy: Option<String>,
    /// Numeric backend: "auto", "cpu" or "gpu".
    pub backend: Option<String>,
    /// SVD method: "auto" or "randomized" (see `hcc compile --svd`).
    pub svd: Option<String>,
    /// Where to write the model.
    pub output: Option<PathBuf>,
    /// Where to write the report (.json or .html).
    pub report: Option<PathBuf>,
    /// Write weights as external data.
    pub external_data: Option<bool>,
}

/// A profile that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read profile '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("profile '{path}': {message}")]
    Parse { path: PathBuf, message: String },
}

impl Profile {
    /// Read a profile, resolving its paths.
    pub fn load(path: &Path) -> Result<Profile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut p: Profile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for f in [&mut p.model, &mut p.passes, &mut p.output, &mut p.report]
            .into_iter()
            .flatten()
        {
            *f = resolve(base, f);
        }
        Ok(p)
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    let models = std::env::var("HCC_MODELS").ok().unwrap_or_else(|| {
        format!(
            "{}/.cache/hcc-models",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    if let Some(rest) = s.strip_prefix("$HCC_MODELS") {
        return PathBuf::from(format!("{models}{rest}"));
    }
    if let Some(rest) = s.strip_prefix("~/") {
        return PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest);
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "model = \"m.onnx\"\nratio = 2.5\nstrategy = \"global\"\nreport = \"/tmp/r.json\"\n",
        )
        .unwrap();
        let p = Profile::load(&f).unwrap();
        assert_eq!(p.model, Some(dir.path().join("m.onnx")));
        assert_eq!(p.ratio, Some(2.5));
        assert_eq!(p.report, Some(PathBuf::from("/tmp/r.json")));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "ratoi = 2\n").unwrap();
        let e = Profile::load(&f).unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("ratoi"), "{e}");
    }
}
