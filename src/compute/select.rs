//! Choosing a numeric backend by name: `auto`, `cpu` or `gpu` (the CLI's `--backend`).

use std::sync::Arc;

use super::gpu::{Gpu, GpuOptions};
use super::{Backend, ComputeError, Cpu};

/// Which backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// A hardware GPU adapter if there is one, else the CPU backend.
    #[default]
    Auto,
    /// The CPU backend (faer + rayon).
    Cpu,
    /// The GPU backend: the best hardware adapter, else a software one (Mesa lavapipe);
    /// an error when wgpu sees none.
    Gpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "gpu" => Ok(BackendChoice::Gpu),
            other => Err(format!(
                "unknown backend '{other}' (expected auto, cpu or gpu)"
            )),
        }
    }
}

/// A backend chosen by [`select`], with why it was taken.
pub struct Selected {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// One line saying what was taken and why, e.g. "gpu:NVIDIA H100 (vulkan)" or
    /// "cpu (auto: no hardware GPU adapter)".
    pub reason: String,
}

/// Open the backend `choice` asks for. `adapter`, if given, restricts the GPU adapters to those
/// whose name contains it (case-insensitive).
///
/// - `Cpu`: always succeeds.
/// - `Gpu`: a hardware adapter if there is one, else a software adapter (with the reason
///   saying so: it is far slower than the CPU backend); [`ComputeError::Device`] when there is
///   none or the device cannot be created.
/// - `Auto`: a hardware adapter if there is one and it opens, else the CPU backend (the reason
///   says why); never an error. On Linux, where a hardware adapter needs a device node, a
///   machine without one (no `/dev/dri/renderD*`, `/dev/nvidia*` or `/dev/dxg`) takes the CPU
///   without loading the graphics stack (about 25 ms saved per process).
pub fn select(choice: BackendChoice, adapter: Option<&str>) -> Result<Selected, ComputeError> {
    let opts = |allow_software: bool| GpuOptions {
        allow_software,
        adapter: adapter.map(str::to_string),
        ..GpuOptions::default()
    };
    let describe = |g: &Gpu| {
        let a = g.adapter();
        format!(
            "{} ({}{})",
            g.name(),
            a.backend,
            if a.software { ", software" } else { "" }
        )
    };
    match choice {
        BackendChoice::Cpu => Ok(Selected {
            backend: Arc::new(Cpu),
            reason: "cpu".into(),
        }),
        BackendChoice::Gpu => {
            let g = Gpu::new_with(opts(true))?;
            let mut reason = describe(&g);
            if g.adapter().software {
                reason.push_str(": no hardware adapter, running on a software one (slow)");
            }
            Ok(Selected {
                backend: Arc::new(g),
                reason,
            })
        }
        BackendChoice::Auto if !gpu_device_nodes() => Ok(Selected {
            backend: Arc::new(Cpu),
            reason: "cpu (auto: no GPU device in /dev, so no hardware adapter to probe)".into(),
        }),
        BackendChoice::Auto => match Gpu::new_with(opts(false)) {
            Ok(g) => {
                let reason = format!("{} (auto)", describe(&g));
                Ok(Selected {
                    backend: Arc::new(g),
                    reason,
                })
            }
            Err(e) => Ok(Selected {
                backend: Arc::new(Cpu),
                reason: format!("cpu (auto: {e})"),
            }),
        },
    }
}

/// Whether the machine may have a hardware GPU adapter: on Linux, a DRM render node, an NVIDIA
/// device or WSL's `/dev/dxg`; elsewhere always (Metal and DX12 adapters have no such node).
fn gpu_device_nodes() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let dev = std::path::Path::new("/dev");
    if dev.join("dxg").exists() || dev.join("nvidiactl").exists() {
        return true;
    }
    let any_prefixed = |dir: &std::path::Path, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    any_prefixed(&dev.join("dri"), "renderD") || any_prefixed(dev, "nvidia")
}
