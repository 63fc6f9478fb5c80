//! Weights files: the variables of a `VarMap` as safetensors.
//!
//! Loading is strict and all-or-nothing: every variable must be in the file with the same
//! shape and dtype, and the file must hold nothing else; otherwise one error names the file and
//! lists every missing, unexpected and mis-shaped tensor, and no variable is changed.
//!
//! The `_prefixed` variants handle a U-Net that lives under a prefix of a larger `VarMap` (a
//! classifier that wraps it, say): only the variables under `prefix.` take part, and their names
//! in the file are without the prefix, so a checkpoint of a bare U-Net loads into the wrapper.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{Result, TensorMismatch, UNetError, WeightsReport};

/// Writes every variable of `varmap` to `path` (safetensors), atomically: a temporary file in
/// the same folder renamed into place, so an interrupted save never leaves a partial file under
/// the final name.
pub fn save_weights(varmap: &VarMap, path: impl AsRef<Path>) -> Result<()> {
    save_selected(varmap, path.as_ref(), "")
}

/// Writes the variables of `varmap` named `prefix.<name>` to `path` under `<name>`.
pub fn save_weights_prefixed(varmap: &VarMap, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
    save_selected(varmap, path.as_ref(), prefix)
}

/// Sets every variable of `varmap` from the tensor of the same name in `path`; see the module
/// documentation for the checks.
pub fn load_weights(varmap: &VarMap, path: impl AsRef<Path>) -> Result<()> {
    load_selected(varmap, path.as_ref(), "")
}

/// Sets the variables of `varmap` named `prefix.<name>` from the tensors `<name>` of `path`;
/// other variables are not touched.
pub fn load_weights_prefixed(varmap: &VarMap, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
    load_selected(varmap, path.as_ref(), prefix)
}

/// The variables taking part, keyed by their name in the file, in sorted order.
fn selected_vars(varmap: &VarMap, path: &Path, prefix: &str) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| UNetError::weights_file(path, "the VarMap's lock is poisoned"))?;
    let mut selected: Vec<(String, Var)> = data
        .iter()
        .filter_map(|(name, var)| {
            let file_name = if prefix.is_empty() {
                Some(name.as_str())
            } else {
                name.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('.'))
            }?;
            Some((file_name.to_string(), var.clone()))
        })
        .collect();
    selected.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(selected)
}

fn save_selected(varmap: &VarMap, path: &Path, prefix: &str) -> Result<()> {
    let selected = selected_vars(varmap, path, prefix)?;
    if selected.is_empty() {
        let what = if prefix.is_empty() {
            "the VarMap is empty".to_string()
        } else {
            format!("the VarMap has no variable under the prefix {prefix:?}")
        };
        return Err(UNetError::weights_file(
            path,
            format!("nothing to save: {what}"),
        ));
    }
    let tensors: HashMap<String, Tensor> = selected
        .into_iter()
        .map(|(name, var)| (name, var.as_detached_tensor()))
        .collect();
    lus_io::write_atomic_via_path(path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| e.to_string())
    })
    .map_err(|reason| UNetError::weights_file(path, format!("cannot write weights: {reason}")))
}

fn load_selected(varmap: &VarMap, path: &Path, prefix: &str) -> Result<()> {
    let selected = selected_vars(varmap, path, prefix)?;
    let bytes = fs::read(path)
        .map_err(|e| UNetError::weights_file(path, format!("cannot read weights: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        let names: Vec<&str> = selected.iter().map(|(n, _)| n.as_str()).collect();
        UNetError::weights_file(
            path,
            format!(
                "not a complete safetensors file (truncated or corrupt?): {e}; none of the {} \
                 expected tensors could be read: {}",
                names.len(),
                names.join(", ")
            ),
        )
    })?;
    let report = compare(&selected, &tensors);
    if !report.is_clean() {
        return Err(UNetError::WeightsMismatch {
            path: path.to_path_buf(),
            report,
        });
    }
    for (name, var) in &selected {
        let value = tensors[name].to_device(var.device())?;
        var.set(&value).map_err(|e| {
            UNetError::weights_file(path, format!("cannot set variable {name}: {e}"))
        })?;
    }
    Ok(())
}

fn compare(selected: &[(String, Var)], tensors: &HashMap<String, Tensor>) -> WeightsReport {
    let mut report = WeightsReport::default();
    for (name, var) in selected {
        match tensors.get(name) {
            None => report.missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() || t.dtype() != var.dtype() => {
                report.mismatched.push(TensorMismatch {
                    name: name.clone(),
                    expected_shape: var.dims().to_vec(),
                    expected_dtype: var.dtype(),
                    found_shape: t.dims().to_vec(),
                    found_dtype: t.dtype(),
                })
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = selected.iter().map(|(n, _)| n.as_str()).collect();
    report.unexpected = tensors
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .cloned()
        .collect();
    report.unexpected.sort();
    report
}
