//! Device selection from a text specification (`cpu`, `cuda`, `cuda:N`, `auto`).
//!
//! Asking for CUDA in a build without the `cuda` feature is an error, never a silent fall back to
//! the CPU: a run that was meant for a GPU and quietly trains for days on a CPU is worse than one
//! that stops at once. Only `auto` chooses, and it says so in its name.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A parsed device specification; in TOML and JSON the text `cpu`, `cuda`, `cuda:N` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device number `n` (`cuda` is `cuda:0`).
    Cuda(usize),
    /// CUDA device 0 when this build has the `cuda` feature and the device opens, else the CPU.
    Auto,
}

impl DeviceSpec {
    /// Parses `cpu`, `cuda`, `cuda:N` or `auto` (surrounding white space and letter case are
    /// ignored). Only the syntax is checked; [`DeviceSpec::open`] checks the build and the
    /// hardware.
    pub fn parse(spec: &str) -> Result<Self> {
        let text = spec.trim().to_ascii_lowercase();
        let invalid = |reason: String| TrainError::Device {
            spec: spec.to_string(),
            reason,
        };
        match text.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "auto" => Ok(Self::Auto),
            other => match other.strip_prefix("cuda:") {
                Some(ordinal) => ordinal.parse::<usize>().map(Self::Cuda).map_err(|_| {
                    invalid(format!(
                        "{ordinal:?} is not a device number (expected cuda:0, cuda:1, ...)"
                    ))
                }),
                None => Err(invalid(
                    "unknown device; expected cpu, cuda, cuda:N or auto".to_string(),
                )),
            },
        }
    }

    /// Opens the device. `Cuda` in a build without the `cuda` feature is an error that names
    /// the feature; `Auto` never fails.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => open_cuda(ordinal),
            Self::Auto => Ok(open_cuda(0).unwrap_or(Device::Cpu)),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(0) => f.write_str("cuda"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        DeviceSpec::parse(&text).map_err(|e| e.to_string())
    }
}

impl From<DeviceSpec> for String {
    fn from(spec: DeviceSpec) -> String {
        spec.to_string()
    }
}

impl DeviceSpec {
    /// What kind of device a run on this specification computes on: `cpu` or `cuda` (`auto`
    /// resolved the way [`DeviceSpec::open`] would resolve it in this process). Two runs of
    /// the same configuration on the same kind give the same numbers, whichever CUDA ordinal
    /// or thread count they used; the CPU and CUDA kernels differ in the last digits.
    pub fn result_kind(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda(_) => "cuda",
            Self::Auto => {
                if CUDA_COMPILED && open_cuda(0).is_ok() {
                    "cuda"
                } else {
                    "cpu"
                }
            }
        }
    }
}

/// Whether this build can use CUDA at all (the `cuda` feature of lus-train).
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

fn open_cuda(ordinal: usize) -> Result<Device> {
    let spec = format!("cuda:{ordinal}");
    if !CUDA_COMPILED {
        return Err(TrainError::Device {
            spec,
            reason: "this build of lus has no CUDA support: rebuild with the `cuda` feature \
                     (cargo build --release --features cuda), or use device = \"cpu\" or \"auto\""
                .to_string(),
        });
    }
    Device::new_cuda(ordinal).map_err(|e| TrainError::Device {
        spec,
        reason: format!("cannot open the CUDA device: {e}"),
    })
}

/// Memory in use on a CUDA device, in MiB, as the driver sees it (`total - free`: every
/// context on the device, the allocator's cached pool included), or `None` on the CPU and in
/// builds without CUDA. A cheap driver call, sampled by the trainer at each loss read-back.
pub fn device_memory_used_mib(device: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some(total.saturating_sub(free) as f64 / (1024.0 * 1024.0));
    }
    let _ = device;
    None
}

/// The device for `spec` (`cpu | cuda | cuda:N | auto`); see [`DeviceSpec`].
pub fn parse_device(spec: &str) -> Result<Device> {
    DeviceSpec::parse(spec)?.open()
}

/// A short human-readable name of a device, for logs and run manifests (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse(" CPU ").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::parse("auto").unwrap(), DeviceSpec::Auto);
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "", "cuda0"] {
            let err = DeviceSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn cpu_and_auto_open() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let auto = parse_device("auto").unwrap();
        if !CUDA_COMPILED {
            assert!(auto.is_cpu());
        }
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error_naming_it() {
        for spec in ["cuda", "cuda:0", "cuda:1"] {
            let err = parse_device(spec).unwrap_err().to_string();
            assert!(err.contains("`cuda` feature"), "{err}");
            assert!(err.contains("cuda:"), "{err}");
        }
    }
}
