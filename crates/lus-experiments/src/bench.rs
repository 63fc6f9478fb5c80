//! `lus bench unet-step`: the time of one U-Net training step (forward in training mode,
//! cross-entropy, backward, AdamW update — the trainer's own loss and optimizer) and of one
//! evaluation forward, median over rounds, with the achieved GFLOP/s. `benches/pytorch_unet_step.py`
//! runs the same network in PyTorch in the same sitting and prints the ratio.

use std::time::Instant;

use anyhow::bail;
use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::{Args, Subcommand};
use lus_train::{Optimizer, OptimizerConfig, ParamGroup, cross_entropy, device_name};
use lus_unet::{Kernels, Mode, Precision, UNet, UNetConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// One U-Net training step and one evaluation forward.
    UnetStep(UnetStepArgs),
}

#[derive(Args, Debug)]
pub struct UnetStepArgs {
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Input side in pixels (a multiple of 2^depth).
    #[arg(long, default_value_t = 128)]
    size: usize,
    #[arg(long, default_value_t = 16)]
    base: usize,
    #[arg(long, default_value_t = 4)]
    depth: usize,
    #[arg(long, default_value_t = 6)]
    classes: usize,
    /// CPU kernels: lus (lus-unet's custom ops) or candle (candle's own ops).
    #[arg(long, default_value = "lus")]
    kernels: String,
    /// Arithmetic of the convolutions: f32, tf32 (CUDA's TF32 tensor cores for f32 products)
    /// or bf16 (autocast: bf16 convolutions, f32 weights, norms, loss and optimizer).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// The 3x3 convolutions of the lus kernels: direct (AVX-512 direct kernels where they
    /// apply: f32, images at least 16 px wide, a CPU with AVX-512F) or gemm (im2col + GEMM
    /// everywhere, the kernels before the direct ones).
    #[arg(long, default_value = "direct")]
    conv3x3: String,
    /// Timed rounds (the median is reported), after one untimed warm-up round.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct UnetStepResult {
    framework: &'static str,
    device: String,
    kernels: String,
    /// `direct` when the direct 3x3 kernels ran (asked for and available), else `gemm`.
    conv3x3: &'static str,
    precision: Precision,
    batch: usize,
    size: usize,
    base: usize,
    depth: usize,
    classes: usize,
    rounds: usize,
    threads: usize,
    gflop_per_step: f64,
    gflop_per_forward: f64,
    step_ms_median: f64,
    step_ms_all: Vec<f64>,
    /// Medians of the step's phases (the device is synchronised between them): train-mode
    /// forward, cross-entropy, backward, optimizer update.
    step_phases_ms_median: StepPhases,
    forward_ms_median: f64,
    step_gflops: f64,
    forward_gflops: f64,
    peak_rss_mib: Option<f64>,
    /// CUDA memory in use (driver total - free, all of this process's allocations and the
    /// context) right after the timed training steps; absent on the CPU.
    device_memory_after_steps_mib: Option<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::UnetStep(args) => unet_step(args),
    }
}

#[derive(Serialize, Clone, Copy, Default)]
struct StepPhases {
    forward: f64,
    loss: f64,
    backward: f64,
    optimizer: f64,
}

fn unet_step(args: UnetStepArgs) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let kernels = match args.kernels.as_str() {
        "lus" => Kernels::Lus,
        "candle" => Kernels::Candle,
        other => bail!("--kernels {other:?}: expected lus or candle"),
    };
    let precision = match args.precision.as_str() {
        "f32" => Precision::F32,
        "tf32" => Precision::Tf32,
        "bf16" => Precision::Bf16,
        other => bail!("--precision {other:?}: expected f32, tf32 or bf16"),
    };
    match args.conv3x3.as_str() {
        "direct" => lus_unet::cpu_ops::set_direct_conv3x3(true),
        "gemm" => lus_unet::cpu_ops::set_direct_conv3x3(false),
        other => bail!("--conv3x3 {other:?}: expected direct or gemm"),
    }
    let device = lus_train::parse_device(&args.device)?;
    let config = UNetConfig {
        num_classes: args.classes,
        depth: args.depth,
        base_channels: args.base,
        kernels,
        precision,
        ..UNetConfig::default()
    };
    config.validate()?;
    if args.size == 0 || !args.size.is_multiple_of(config.min_input_multiple()) {
        bail!(
            "--size {} is not a positive multiple of 2^depth = {}",
            args.size,
            config.min_input_multiple()
        );
    }
    let varmap = VarMap::new();
    let unet = UNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    unet.init_weights(&varmap, &mut rng)?;
    let names = unet
        .param_specs()
        .iter()
        .filter(|s| s.kind.is_trainable())
        .map(|s| s.name.clone());
    let group = ParamGroup::new("unet", names.zip(unet.trainable_vars(&varmap)?).collect());
    let mut optimizer = Optimizer::new(OptimizerConfig::default(), 1e-4, vec![group])?;

    let (n, side) = (args.batch, args.size);
    let pixels: Vec<f32> = (0..n * side * side)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let x = Tensor::from_vec(pixels, (n, 1, side, side), &device)?;
    let labels: Vec<u32> = (0..n * side * side)
        .map(|_| rng.random_range(0..args.classes as u32))
        .collect();
    let labels = Tensor::from_vec(labels, (n, side, side), &device)?;

    let mut step = |round: usize| -> anyhow::Result<(f64, StepPhases)> {
        let mut dropout = ChaCha8Rng::seed_from_u64(round as u64);
        let start = Instant::now();
        let mut lap = {
            let (mut last, device) = (start, &device);
            move || -> anyhow::Result<f64> {
                device.synchronize()?;
                let now = Instant::now();
                let ms = (now - last).as_secs_f64() * 1e3;
                last = now;
                Ok(ms)
            }
        };
        let logits = unet.forward_t(&x, &mut Mode::train(&mut dropout))?;
        let forward = lap()?;
        let loss = cross_entropy(&logits, &labels, None, None)?;
        let loss_ms = lap()?;
        let grads = loss.backward()?;
        let backward = lap()?;
        optimizer.step(&grads, 1e-3)?;
        // The step is done when its result is on the host (candle's CUDA ops are asynchronous).
        loss.to_scalar::<f32>()?;
        let optimizer_ms = lap()?;
        let phases = StepPhases {
            forward,
            loss: loss_ms,
            backward,
            optimizer: optimizer_ms,
        };
        Ok((start.elapsed().as_secs_f64() * 1e3, phases))
    };
    step(0)?;
    let (steps, phases): (Vec<f64>, Vec<StepPhases>) = (1..=args.rounds)
        .map(&mut step)
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let phase_median =
        |f: fn(&StepPhases) -> f64| median(&phases.iter().map(f).collect::<Vec<_>>());
    let step_phases_ms_median = StepPhases {
        forward: phase_median(|p| p.forward),
        loss: phase_median(|p| p.loss),
        backward: phase_median(|p| p.backward),
        optimizer: phase_median(|p| p.optimizer),
    };
    let device_memory_after_steps_mib = lus_train::device_memory_used_mib(&device);
    let forward = |_: usize| -> anyhow::Result<f64> {
        let start = Instant::now();
        unet.forward_t(&x, &mut Mode::Eval)?
            .sum_all()?
            .to_scalar::<f32>()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    forward(0)?;
    let forwards = (1..=args.rounds)
        .map(forward)
        .collect::<anyhow::Result<Vec<f64>>>()?;

    let macs = config.forward_macs(n, side);
    let (gflop_forward, gflop_step) = (2.0 * macs / 1e9, 6.0 * macs / 1e9);
    let (step_ms, forward_ms) = (median(&steps), median(&forwards));
    let result = UnetStepResult {
        framework: "lus",
        device: device_name(&device),
        kernels: args.kernels.clone(),
        conv3x3: if lus_unet::cpu_ops::direct_conv3x3_active() {
            "direct"
        } else {
            "gemm"
        },
        precision,
        batch: n,
        size: side,
        base: args.base,
        depth: args.depth,
        classes: args.classes,
        rounds: args.rounds,
        threads: rayon::current_num_threads(),
        gflop_per_step: gflop_step,
        gflop_per_forward: gflop_forward,
        step_ms_median: step_ms,
        step_ms_all: steps,
        step_phases_ms_median,
        forward_ms_median: forward_ms,
        step_gflops: gflop_step / (step_ms / 1e3),
        forward_gflops: gflop_forward / (forward_ms / 1e3),
        peak_rss_mib: crate::provenance::peak_rss_mib(),
        device_memory_after_steps_mib,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "lus U-Net (depth {}, base {}, {} classes, {} kernels, {:?}) on {}, batch {n} x 1 x {side} x {side}, {} threads:\n  \
             training step {:.1} ms (median of {}; {:.2} GFLOP, {:.1} GFLOP/s)\n  \
             phases (medians): forward {:.1} ms, loss {:.1} ms, backward {:.1} ms, optimizer {:.1} ms\n  \
             eval forward  {:.1} ms ({:.2} GFLOP, {:.1} GFLOP/s)\n  peak RSS {}",
            args.depth,
            args.base,
            args.classes,
            args.kernels,
            precision,
            result.device,
            result.threads,
            step_ms,
            args.rounds,
            gflop_step,
            result.step_gflops,
            step_phases_ms_median.forward,
            step_phases_ms_median.loss,
            step_phases_ms_median.backward,
            step_phases_ms_median.optimizer,
            forward_ms,
            gflop_forward,
            result.forward_gflops,
            result
                .peak_rss_mib
                .map_or("unknown".to_string(), |m| format!("{m:.0} MiB")),
        );
    }
    Ok(())
}
