//! Optimizers whose state we own, so a run can stop and continue bit for bit: AdamW (decoupled
//! weight decay) and SGD (momentum, dampening, Nesterov), with the update rules of PyTorch's
//! `torch.optim.AdamW` and `torch.optim.SGD` (single-tensor implementations), parameter groups
//! with their own learning-rate multiplier and weight decay, and gradient-norm clipping.
//!
//! candle-nn's `AdamW` is not used: its moments are private, so a checkpoint could not hold them
//! and a resumed run would restart Adam's bias correction from step 1.
//!
//! # State files
//!
//! [`Optimizer::save`] writes two files into a folder: `optimizer.safetensors` with one tensor
//! per state buffer, named `<parameter>.exp_avg`, `<parameter>.exp_avg_sq` (AdamW) or
//! `<parameter>.momentum_buffer` (SGD with momentum), and `optimizer.json` with the optimizer
//! kind, the global step count, the groups with their parameter names, and per parameter its own
//! step count and which buffers it has (a parameter that never received a gradient has none, as
//! in PyTorch). The hyper-parameters (betas, momentum, learning rate, weight decay) are not
//! taken from the file: they are the caller's, so a deliberate change on resume takes effect.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// File name of the optimizer's state buffers inside a checkpoint folder.
pub const OPTIMIZER_TENSORS_FILE: &str = "optimizer.safetensors";
/// File name of the optimizer's step counts and layout inside a checkpoint folder.
pub const OPTIMIZER_STATE_FILE: &str = "optimizer.json";
const STATE_FORMAT: &str = "lus-optimizer-v1";

/// Which optimizer, with its own hyper-parameters (the learning rate, its schedule and the
/// weight decay are set beside it, in the training config). In TOML:
/// `optimizer = { kind = "adamw", beta2 = 0.99 }` or
/// `optimizer = { kind = "sgd", momentum = 0.9, nesterov = true }`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's `AdamW`:
    /// `p <- p (1 - lr wd)`, `m <- m + (1 - b1)(g - m)`, `v <- b2 v + (1 - b2) g^2`,
    /// `p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    #[serde(rename = "adamw")]
    AdamW {
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    /// Stochastic gradient descent, PyTorch's `SGD`: `d = g + wd p`; with momentum `mu`,
    /// `b <- d` on a parameter's first step, else `b <- mu b + (1 - dampening) d`, and
    /// `d <- d + mu b` (Nesterov) or `d <- b`; then `p <- p - lr d`.
    Sgd {
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default)]
        dampening: f64,
        #[serde(default)]
        nesterov: bool,
    },
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_momentum() -> f64 {
    0.9
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::AdamW {
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
        }
    }
}

impl OptimizerConfig {
    /// The kind as written in TOML (`adamw`, `sgd`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AdamW { .. } => "adamw",
            Self::Sgd { .. } => "sgd",
        }
    }

    /// Checks the hyper-parameters' ranges; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, value: f64, closed_top: bool| {
            let ok = value.is_finite()
                && value >= 0.0
                && if closed_top {
                    value <= 1.0
                } else {
                    value < 1.0
                };
            if ok {
                Ok(())
            } else {
                let range = if closed_top { "[0, 1]" } else { "[0, 1)" };
                Err(TrainError::config(
                    format!("optimizer.{name}"),
                    format!("must be in {range}, is {value}"),
                ))
            }
        };
        match *self {
            Self::AdamW { beta1, beta2, eps } => {
                unit("beta1", beta1, false)?;
                unit("beta2", beta2, false)?;
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(TrainError::config(
                        "optimizer.eps",
                        format!("must be finite and > 0, is {eps}"),
                    ));
                }
            }
            Self::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                unit("momentum", momentum, false)?;
                unit("dampening", dampening, true)?;
                if nesterov && (momentum == 0.0 || dampening != 0.0) {
                    return Err(TrainError::config(
                        "optimizer.nesterov",
                        "Nesterov momentum needs momentum > 0 and dampening = 0",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Parameters that share a learning-rate multiplier and a weight decay.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// Name of the group (in the state file and in errors).
    pub name: String,
    /// The parameters with their names (unique across all groups of an optimizer).
    pub params: Vec<(String, Var)>,
    /// The group's learning rate is the scheduled rate times this.
    pub lr_multiplier: f64,
    /// The group's weight decay; `None` takes the optimizer's.
    pub weight_decay: Option<f64>,
}

impl ParamGroup {
    /// A group with multiplier 1 and the optimizer's weight decay.
    pub fn new(name: impl Into<String>, params: Vec<(String, Var)>) -> Self {
        ParamGroup {
            name: name.into(),
            params,
            lr_multiplier: 1.0,
            weight_decay: None,
        }
    }

    pub fn with_lr_multiplier(mut self, multiplier: f64) -> Self {
        self.lr_multiplier = multiplier;
        self
    }

    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = Some(weight_decay);
        self
    }
}

/// The optimizer state of one parameter.
#[derive(Clone, Debug, Default)]
struct ParamState {
    /// Updates this parameter received (its own count: a parameter without a gradient in some
    /// step is skipped, as in PyTorch, and its bias correction stays where it was).
    step: u64,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    momentum_buffer: Option<Tensor>,
}

impl ParamState {
    fn buffers(&self) -> [(&'static str, Option<&Tensor>); 3] {
        [
            ("exp_avg", self.exp_avg.as_ref()),
            ("exp_avg_sq", self.exp_avg_sq.as_ref()),
            ("momentum_buffer", self.momentum_buffer.as_ref()),
        ]
    }
}

/// AdamW or SGD over groups of candle `Var`s, with state that can be saved and loaded.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    weight_decay: f64,
    groups: Vec<ParamGroup>,
    /// `state[g][i]` belongs to `groups[g].params[i]`.
    state: Vec<Vec<ParamState>>,
    steps: u64,
}

impl Optimizer {
    /// An optimizer over `groups`; `weight_decay` applies to groups that do not set their own.
    /// Parameter names must be unique, and no variable may appear twice.
    pub fn new(
        config: OptimizerConfig,
        weight_decay: f64,
        groups: Vec<ParamGroup>,
    ) -> Result<Self> {
        config.validate()?;
        check_weight_decay("weight_decay", weight_decay)?;
        let mut names = HashMap::new();
        let mut ids = HashMap::new();
        let mut group_names = HashMap::new();
        for group in &groups {
            if group_names.insert(group.name.clone(), ()).is_some() {
                return Err(TrainError::config(
                    "optimizer groups",
                    format!("two groups are named {:?}", group.name),
                ));
            }
            if !(group.lr_multiplier.is_finite() && group.lr_multiplier >= 0.0) {
                return Err(TrainError::config(
                    format!("group {}: lr_multiplier", group.name),
                    format!("must be finite and >= 0, is {}", group.lr_multiplier),
                ));
            }
            if let Some(wd) = group.weight_decay {
                check_weight_decay(&format!("group {}: weight_decay", group.name), wd)?;
            }
            for (name, var) in &group.params {
                if let Some(other) = names.insert(name.clone(), group.name.clone()) {
                    return Err(TrainError::config(
                        "optimizer groups",
                        format!(
                            "parameter {name:?} appears twice (groups {other:?} and {:?})",
                            group.name
                        ),
                    ));
                }
                if let Some(other) = ids.insert(var.as_tensor().id(), name.clone()) {
                    return Err(TrainError::config(
                        "optimizer groups",
                        format!("parameters {other:?} and {name:?} are the same variable"),
                    ));
                }
                if !var.dtype().is_float() {
                    return Err(TrainError::config(
                        "optimizer groups",
                        format!("parameter {name:?} has dtype {:?}", var.dtype()),
                    ));
                }
            }
        }
        let state = groups
            .iter()
            .map(|g| vec![ParamState::default(); g.params.len()])
            .collect();
        Ok(Optimizer {
            config,
            weight_decay,
            groups,
            state,
            steps: 0,
        })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Optimizer steps taken (loaded state included).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Every parameter, in group order.
    pub fn params(&self) -> impl Iterator<Item = &(String, Var)> {
        self.groups.iter().flat_map(|g| g.params.iter())
    }

    /// One update of every parameter that has a gradient in `grads`, with learning rate
    /// `lr * group.lr_multiplier`. Parameters without a gradient are left alone, state included.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(TrainError::config(
                "learning rate",
                format!("must be finite and >= 0, is {lr}"),
            ));
        }
        for (group, states) in self.groups.iter().zip(self.state.iter_mut()) {
            let group_lr = lr * group.lr_multiplier;
            let weight_decay = group.weight_decay.unwrap_or(self.weight_decay);
            for ((name, var), state) in group.params.iter().zip(states.iter_mut()) {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                if grad.dims() != var.dims() {
                    return Err(TrainError::Batch(format!(
                        "gradient of {name} has shape {:?}, the parameter {:?}",
                        grad.dims(),
                        var.dims()
                    )));
                }
                // Detached: a gradient candle computed from activations can still reference
                // the step's graph (e.g. a linear layer's weight gradient is built from the
                // layer's input), and the moment buffers made from it would then keep every
                // step's activations alive, one graph per step.
                let grad = grad.to_dtype(var.dtype())?.detach();
                let param = var.as_detached_tensor();
                let updated = match self.config {
                    OptimizerConfig::AdamW { beta1, beta2, eps } => {
                        let h = AdamW {
                            lr: group_lr,
                            beta1,
                            beta2,
                            eps,
                            weight_decay,
                        };
                        match adamw_update_fused_cpu(state, &param, &grad, &h)? {
                            Some(updated) => updated,
                            None => adamw_update(state, &param, &grad, h)?,
                        }
                    }
                    OptimizerConfig::Sgd {
                        momentum,
                        dampening,
                        nesterov,
                    } => sgd_update(
                        state,
                        &param,
                        &grad,
                        Sgd {
                            lr: group_lr,
                            momentum,
                            dampening,
                            nesterov,
                            weight_decay,
                        },
                    )?,
                };
                var.set(&updated)?;
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// Scales the gradients of this optimizer's parameters in `grads` so that their global L2
    /// norm is at most `max_norm`, as PyTorch's `clip_grad_norm_`: every gradient is multiplied
    /// by `min(1, max_norm / (norm + 1e-6))`. Returns the norm before clipping, as a scalar
    /// tensor on the device (nothing is copied to the host).
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<Option<Tensor>> {
        let present: Vec<&Var> = self
            .params()
            .map(|(_, v)| v)
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .collect();
        if present.is_empty() {
            return Ok(None);
        }
        let mut squares = Vec::with_capacity(present.len());
        for var in &present {
            let g = grads.get(var.as_tensor()).expect("filtered above");
            squares.push(g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F32)?);
        }
        let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
        let coef = norm
            .affine(1.0, 1e-6)?
            .recip()?
            .affine(max_norm, 0.0)?
            .minimum(1.0)?;
        for var in present {
            let g = grads.get(var.as_tensor()).expect("filtered above");
            let scaled = g.broadcast_mul(&coef.to_dtype(g.dtype())?)?;
            grads.insert(var.as_tensor(), scaled);
        }
        Ok(Some(norm))
    }

    /// The sum of every gradient this optimizer would apply, one f32 per parameter that has a
    /// gradient in `grads`, stacked into one vector that stays on the device, with the
    /// positions (in [`Optimizer::params`] order) of those parameters. A gradient holds a NaN
    /// or an infinity exactly when its sum is not finite (NaN and opposite infinities give NaN;
    /// a sum can overflow only when the gradient's elements are near f32's maximum over its
    /// size, a run that has diverged anyway). The trainer reads these back with the losses,
    /// so the check adds one reduction per parameter per step and no host synchronisation.
    pub fn gradient_sums(&self, grads: &GradStore) -> Result<Option<(Tensor, Vec<usize>)>> {
        let mut sums = Vec::new();
        let mut positions = Vec::new();
        for (position, (_, var)) in self.params().enumerate() {
            if let Some(grad) = grads.get(var.as_tensor()) {
                // Detached, as in `step`: the sums wait in the trainer's window for several
                // steps and must not keep this step's graph alive meanwhile.
                sums.push(grad.detach().sum_all()?.to_dtype(candle_core::DType::F32)?);
                positions.push(position);
            }
        }
        if sums.is_empty() {
            return Ok(None);
        }
        Ok(Some((Tensor::stack(&sums, 0)?, positions)))
    }

    /// The name of the parameter at `position` in [`Optimizer::params`] order.
    pub fn param_name(&self, position: usize) -> Option<&str> {
        self.params().nth(position).map(|(name, _)| name.as_str())
    }

    /// Writes the state into `dir` (created if needed): [`OPTIMIZER_TENSORS_FILE`] and
    /// [`OPTIMIZER_STATE_FILE`], each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::file(dir, e))?;
        let mut tensors = HashMap::new();
        let mut params = BTreeMap::new();
        for (group, states) in self.groups.iter().zip(&self.state) {
            for ((name, _), state) in group.params.iter().zip(states) {
                let mut buffers = Vec::new();
                for (kind, tensor) in state.buffers() {
                    if let Some(t) = tensor {
                        tensors.insert(format!("{name}.{kind}"), t.clone());
                        buffers.push(kind.to_string());
                    }
                }
                params.insert(
                    name.clone(),
                    SavedParam {
                        step: state.step,
                        buffers,
                    },
                );
            }
        }
        let saved = SavedState {
            format: STATE_FORMAT.to_string(),
            kind: self.config.kind().to_string(),
            steps: self.steps,
            groups: self
                .groups
                .iter()
                .map(|g| SavedGroup {
                    name: g.name.clone(),
                    params: g.params.iter().map(|(n, _)| n.clone()).collect(),
                })
                .collect(),
            params,
        };
        save_tensors_atomic(&tensors, &dir.join(OPTIMIZER_TENSORS_FILE))?;
        let json_path = dir.join(OPTIMIZER_STATE_FILE);
        let json =
            serde_json::to_vec_pretty(&saved).map_err(|e| TrainError::file(&json_path, e))?;
        lus_io::write_atomic(&json_path, &json)?;
        Ok(())
    }

    /// Replaces the state with the one saved in `dir` by [`Optimizer::save`]. The saved
    /// optimizer must be of the same kind with the same groups and parameter names, and every
    /// buffer must fit its parameter; otherwise nothing changes and the error names the file.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let json_path = dir.join(OPTIMIZER_STATE_FILE);
        let text = lus_io::read_text(&json_path)?;
        let saved: SavedState =
            serde_json::from_str(&text).map_err(|e| TrainError::file(&json_path, e))?;
        if saved.format != STATE_FORMAT {
            return Err(TrainError::file(
                &json_path,
                format!(
                    "unknown format {:?} (expected {STATE_FORMAT:?})",
                    saved.format
                ),
            ));
        }
        if saved.kind != self.config.kind() {
            return Err(TrainError::file(
                &json_path,
                format!(
                    "state of a {} optimizer cannot be loaded into a {} optimizer",
                    saved.kind,
                    self.config.kind()
                ),
            ));
        }
        let ours: Vec<(String, Vec<String>)> = self
            .groups
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    g.params.iter().map(|(n, _)| n.clone()).collect(),
                )
            })
            .collect();
        let theirs: Vec<(String, Vec<String>)> = saved
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.params.clone()))
            .collect();
        if ours != theirs {
            return Err(TrainError::file(
                &json_path,
                format!(
                    "parameter groups differ: {}",
                    describe_group_difference(&ours, &theirs)
                ),
            ));
        }
        let tensors_path = dir.join(OPTIMIZER_TENSORS_FILE);
        let bytes = lus_io::read_file(&tensors_path)?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| TrainError::file(&tensors_path, format!("not a safetensors file: {e}")))?;
        let mut new_state = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let mut states = Vec::with_capacity(group.params.len());
            for (name, var) in &group.params {
                let entry = saved.params.get(name).ok_or_else(|| {
                    TrainError::file(&json_path, format!("no entry for parameter {name}"))
                })?;
                let mut state = ParamState {
                    step: entry.step,
                    ..Default::default()
                };
                for kind in &entry.buffers {
                    let key = format!("{name}.{kind}");
                    let tensor = tensors.remove(&key).ok_or_else(|| {
                        TrainError::file(&tensors_path, format!("missing tensor {key}"))
                    })?;
                    if tensor.dims() != var.dims() || tensor.dtype() != var.dtype() {
                        return Err(TrainError::file(
                            &tensors_path,
                            format!(
                                "tensor {key} is {:?} {:?}, its parameter {:?} {:?}",
                                tensor.dtype(),
                                tensor.dims(),
                                var.dtype(),
                                var.dims()
                            ),
                        ));
                    }
                    let tensor = tensor.to_device(var.device())?;
                    let slot = match kind.as_str() {
                        "exp_avg" => &mut state.exp_avg,
                        "exp_avg_sq" => &mut state.exp_avg_sq,
                        "momentum_buffer" => &mut state.momentum_buffer,
                        other => {
                            return Err(TrainError::file(
                                &json_path,
                                format!("unknown buffer {other:?} of parameter {name}"),
                            ));
                        }
                    };
                    *slot = Some(tensor);
                }
                states.push(state);
            }
            new_state.push(states);
        }
        if !tensors.is_empty() {
            let mut extra: Vec<String> = tensors.into_keys().collect();
            extra.sort();
            return Err(TrainError::file(
                &tensors_path,
                format!("unexpected tensors: {}", extra.join(", ")),
            ));
        }
        self.state = new_state;
        self.steps = saved.steps;
        Ok(())
    }
}

fn check_weight_decay(field: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(TrainError::config(
            field,
            format!("must be finite and >= 0, is {value}"),
        ))
    }
}

fn describe_group_difference(
    ours: &[(String, Vec<String>)],
    theirs: &[(String, Vec<String>)],
) -> String {
    let names = |g: &[(String, Vec<String>)]| g.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(ours) != names(theirs) {
        return format!(
            "the optimizer has groups {:?}, the file {:?}",
            names(ours),
            names(theirs)
        );
    }
    for ((group, a), (_, b)) in ours.iter().zip(theirs) {
        if a != b {
            let missing: Vec<&String> = a.iter().filter(|n| !b.contains(n)).collect();
            let unexpected: Vec<&String> = b.iter().filter(|n| !a.contains(n)).collect();
            return format!(
                "group {group:?}: missing from the file {missing:?}, unexpected in the file \
                 {unexpected:?}{}",
                if missing.is_empty() && unexpected.is_empty() {
                    " (same names in another order)"
                } else {
                    ""
                }
            );
        }
    }
    "none".to_string()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    format: String,
    kind: String,
    steps: u64,
    groups: Vec<SavedGroup>,
    params: BTreeMap<String, SavedParam>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedGroup {
    name: String,
    params: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedParam {
    step: u64,
    buffers: Vec<String>,
}

struct AdamW {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

/// PyTorch's `_single_tensor_adamw` step, operation for operation (the order of the scalar
/// products follows its `lerp_`, `addcmul_` and `addcdiv_` kernels).
fn adamw_update(
    state: &mut ParamState,
    param: &Tensor,
    grad: &Tensor,
    h: AdamW,
) -> candle_core::Result<Tensor> {
    state.step += 1;
    let step = state.step as f64;
    let exp_avg = match &state.exp_avg {
        // lerp_(grad, 1 - beta1): m + (1 - beta1) (g - m)
        Some(m) => (m + (grad - m)?.affine(1.0 - h.beta1, 0.0)?)?,
        None => grad.affine(1.0 - h.beta1, 0.0)?,
    };
    let g_scaled_sq = grad.affine(1.0 - h.beta2, 0.0)?.mul(grad)?;
    let exp_avg_sq = match &state.exp_avg_sq {
        // mul_(beta2).addcmul_(grad, grad, value = 1 - beta2)
        Some(v) => (v.affine(h.beta2, 0.0)? + g_scaled_sq)?,
        None => g_scaled_sq,
    };
    let bias_correction1 = 1.0 - h.beta1.powf(step);
    let bias_correction2 = 1.0 - h.beta2.powf(step);
    let step_size = h.lr / bias_correction1;
    // A true division by the scalar (not a multiplication by its reciprocal), as torch does.
    let bias_correction2_sqrt =
        Tensor::new(bias_correction2.sqrt(), param.device())?.to_dtype(param.dtype())?;
    let denom = exp_avg_sq
        .sqrt()?
        .broadcast_div(&bias_correction2_sqrt)?
        .affine(1.0, h.eps)?;
    let decayed = if h.weight_decay != 0.0 {
        param.affine(1.0 - h.lr * h.weight_decay, 0.0)?
    } else {
        param.clone()
    };
    let updated = (decayed - exp_avg.affine(step_size, 0.0)?.div(&denom)?)?;
    state.exp_avg = Some(exp_avg);
    state.exp_avg_sq = Some(exp_avg_sq);
    Ok(updated)
}

/// The contiguous f32 data of a CPU tensor's storage (`None` for any other tensor).
fn cpu_f32_slice<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> Option<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(cpu) => crate::loss::contiguous_f32("adamw", cpu, layout).ok(),
        _ => None,
    }
}

/// [`adamw_update`] in one pass for f32 tensors on the CPU: the same f32 operations in the
/// same order, so bit-identical (`fused_adamw_equals_the_candle_ops` below), where the
/// candle-op version allocates and walks about a dozen tensors per parameter (7-9 ms per
/// step for the 1.9 M parameters of the depth-4 base-16 U-Net on 2 cores, a sixth of a
/// batch-1 step). `None` (nothing changed) for any other device or type.
// Unsafe: the three output vectors are written once each without being zeroed first.
#[allow(unsafe_code)]
fn adamw_update_fused_cpu(
    state: &mut ParamState,
    param: &Tensor,
    grad: &Tensor,
    h: &AdamW,
) -> candle_core::Result<Option<Tensor>> {
    let (p_storage, p_layout) = param.storage_and_layout();
    let (g_storage, g_layout) = grad.storage_and_layout();
    let (Some(p), Some(g)) = (
        cpu_f32_slice(&p_storage, p_layout),
        cpu_f32_slice(&g_storage, g_layout),
    ) else {
        return Ok(None);
    };
    let (exp_avg, exp_avg_sq) = (state.exp_avg.clone(), state.exp_avg_sq.clone());
    let guards = match (&exp_avg, &exp_avg_sq) {
        (Some(m), Some(v)) => Some((m.storage_and_layout(), v.storage_and_layout())),
        (None, None) => None,
        _ => return Ok(None),
    };
    let moments = match &guards {
        Some(((m_storage, m_layout), (v_storage, v_layout))) => match (
            cpu_f32_slice(m_storage, m_layout),
            cpu_f32_slice(v_storage, v_layout),
        ) {
            (Some(m), Some(v)) if m.len() == g.len() && v.len() == g.len() => Some((m, v)),
            _ => return Ok(None),
        },
        None => None,
    };
    if p.len() != g.len() {
        return Ok(None);
    }
    let step = (state.step + 1) as f64;
    // The scalars as candle's ops see them: affine's factors rounded to f32, the bias
    // correction's square root built as an f64 tensor and cast to f32.
    let c1 = (1.0 - h.beta1) as f32;
    let c2 = (1.0 - h.beta2) as f32;
    let beta2 = h.beta2 as f32;
    let eps = h.eps as f32;
    let step_size = (h.lr / (1.0 - h.beta1.powf(step))) as f32;
    let bias_correction2_sqrt = (1.0 - h.beta2.powf(step)).sqrt() as f32;
    let decay = (h.weight_decay != 0.0).then_some((1.0 - h.lr * h.weight_decay) as f32);
    let len = g.len();
    let (mut p_new, mut m_new, mut v_new) = (
        Vec::<f32>::with_capacity(len),
        Vec::<f32>::with_capacity(len),
        Vec::<f32>::with_capacity(len),
    );
    let outputs = p_new.spare_capacity_mut()[..len]
        .iter_mut()
        .zip(&mut m_new.spare_capacity_mut()[..len])
        .zip(&mut v_new.spare_capacity_mut()[..len]);
    // One loop per case and zipped slices of equal length: a loop the compiler vectorises
    // (an indexed loop with the case tested per element ran 2x slower than candle's ops).
    let update = |p: f32, m: f32, v: f32| {
        let denom = (v.sqrt() / bias_correction2_sqrt) * 1.0 + eps;
        let decayed = match decay {
            Some(d) => p * d + 0.0,
            None => p,
        };
        decayed - ((m * step_size + 0.0) / denom)
    };
    match moments {
        Some((m_old, v_old)) => {
            for ((((out, p), g), m_old), v_old) in outputs.zip(p).zip(g).zip(m_old).zip(v_old) {
                let m = m_old + ((g - m_old) * c1 + 0.0);
                let v = (v_old * beta2 + 0.0) + (g * c2 + 0.0) * g;
                out.0.0.write(update(*p, m, v));
                out.0.1.write(m);
                out.1.write(v);
            }
        }
        None => {
            for ((out, p), g) in outputs.zip(p).zip(g) {
                let m = g * c1 + 0.0;
                let v = (g * c2 + 0.0) * g;
                out.0.0.write(update(*p, m, v));
                out.0.1.write(m);
                out.1.write(v);
            }
        }
    }
    // SAFETY: the loops above wrote all `len` elements of each vector (p, g and the moments
    // all have `len` elements, checked above).
    unsafe {
        p_new.set_len(len);
        m_new.set_len(len);
        v_new.set_len(len);
    }
    let shape = param.shape().clone();
    let device = param.device().clone();
    state.step += 1;
    state.exp_avg = Some(Tensor::from_vec(m_new, &shape, &device)?);
    state.exp_avg_sq = Some(Tensor::from_vec(v_new, &shape, &device)?);
    Ok(Some(Tensor::from_vec(p_new, &shape, &device)?))
}

struct Sgd {
    lr: f64,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
    weight_decay: f64,
}

/// PyTorch's `_single_tensor_sgd` step.
fn sgd_update(
    state: &mut ParamState,
    param: &Tensor,
    grad: &Tensor,
    h: Sgd,
) -> candle_core::Result<Tensor> {
    state.step += 1;
    let mut direction = if h.weight_decay != 0.0 {
        (grad + param.affine(h.weight_decay, 0.0)?)?
    } else {
        grad.clone()
    };
    if h.momentum != 0.0 {
        let buffer = match &state.momentum_buffer {
            Some(b) => (b.affine(h.momentum, 0.0)? + direction.affine(1.0 - h.dampening, 0.0)?)?,
            None => direction.clone(),
        };
        direction = if h.nesterov {
            (direction + buffer.affine(h.momentum, 0.0)?)?
        } else {
            buffer.clone()
        };
        state.momentum_buffer = Some(buffer);
    }
    param - direction.affine(h.lr, 0.0)?
}

/// Writes `tensors` as safetensors to `path` atomically (temporary file in the same folder,
/// flushed, renamed into place), so an interrupted save leaves the previous file whole.
pub(crate) fn save_tensors_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    lus_io::write_atomic_via_path(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp).map_err(|e| e.to_string())
    })
    .map_err(|reason| TrainError::file(path, format!("cannot write tensors: {reason}")))
}

#[cfg(test)]
mod fused_tests {
    use candle_core::Device;
    use rand::{RngExt, SeedableRng};

    use super::*;

    fn random(len: usize, rng: &mut rand_chacha::ChaCha8Rng, scale: f32) -> Tensor {
        let v: Vec<f32> = (0..len)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect();
        Tensor::from_vec(v, (len / 5, 5), &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    /// Five steps of the fused f32 update and of the candle-op update from the same state give
    /// the same bits (parameters and both moments), with and without weight decay, with
    /// gradients of very different scales (including zeros).
    #[test]
    fn fused_adamw_equals_the_candle_ops() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for weight_decay in [0.0, 0.01] {
            let h = AdamW {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay,
            };
            let (mut fused_state, mut ops_state) = (ParamState::default(), ParamState::default());
            // 50,000 elements.
            let mut fused_param = random(50_000, &mut rng, 1.0);
            let mut ops_param = fused_param.clone();
            for step in 0..5 {
                let scale = [1.0, 1e-4, 30.0, 0.0, 1e-30][step];
                let grad = random(50_000, &mut rng, scale);
                fused_param = adamw_update_fused_cpu(&mut fused_state, &fused_param, &grad, &h)
                    .unwrap()
                    .expect("f32 on the CPU takes the fused path");
                let h_ops = AdamW { ..h };
                ops_param = adamw_update(&mut ops_state, &ops_param, &grad, h_ops).unwrap();
                assert_eq!(
                    bits(&fused_param),
                    bits(&ops_param),
                    "step {step}: parameters"
                );
                for (a, b) in [
                    (&fused_state.exp_avg, &ops_state.exp_avg),
                    (&fused_state.exp_avg_sq, &ops_state.exp_avg_sq),
                ] {
                    assert_eq!(bits(a.as_ref().unwrap()), bits(b.as_ref().unwrap()));
                }
                assert_eq!(fused_state.step, ops_state.step);
            }
        }
    }

    /// Other element types are left to the candle ops.
    #[test]
    fn fused_adamw_declines_f64() {
        let h = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let t = Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
        let mut state = ParamState::default();
        assert!(
            adamw_update_fused_cpu(&mut state, &t, &t, &h)
                .unwrap()
                .is_none()
        );
        assert_eq!(state.step, 0);
    }
}

#[cfg(test)]
mod graph_tests {
    use candle_core::{Device, Var};

    use super::*;

    /// A gradient candle builds from an activation references that activation's graph; the
    /// optimizer's state must not keep it (or every step's graph stays alive: a leak of one
    /// forward pass per step, seen as gigabytes in a classifier run before this was fixed).
    #[test]
    fn state_holds_no_graph_of_the_step() {
        for config in [
            OptimizerConfig::default(),
            OptimizerConfig::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            },
        ] {
            let w = Var::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
            let x0 = Var::new(&[[0.5f32, -1.]], &Device::Cpu).unwrap();
            let x = x0.as_tensor().affine(2.0, 0.0).unwrap();
            let loss = x.matmul(w.as_tensor()).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            assert!(
                grads.get(w.as_tensor()).unwrap().track_op(),
                "precondition: this gradient carries the graph"
            );
            let mut optimizer = Optimizer::new(
                config,
                0.0,
                vec![ParamGroup::new("g", vec![("w".into(), w.clone())])],
            )
            .unwrap();
            optimizer.step(&grads, 0.1).unwrap();
            optimizer.step(&grads, 0.1).unwrap();
            let state = &optimizer.state[0][0];
            let mut buffers = 0;
            for (kind, tensor) in state.buffers() {
                if let Some(t) = tensor {
                    assert!(!t.track_op(), "{kind} keeps the graph");
                    buffers += 1;
                }
            }
            assert!(buffers >= 1);
        }
    }
}
