//! The U-Net's 3x3 convolutions (stride 1, padding 1) on the two CPU paths of lus's conv
//! kernels: the direct AVX-512 kernels and im2col + GEMM, interleaved round by round so that
//! the ratio holds on a busy machine. Forward, input gradient and weight gradient, each timed
//! alone on plain slices (no autograd graph around them). Prints medians and GFLOP/s
//! (2 * MACs per kernel).
//!
//! `cargo run --release -p lus-unet --example conv3x3_paths [batch] [size] [rounds]`

use std::time::Instant;

use lus_unet::cpu_ops::{conv2d_raw, direct_conv3x3_active, set_direct_conv3x3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn randn(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| StandardNormal.sample(&mut rng)).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let batch = args.first().copied().unwrap_or(8);
    let size = args.get(1).copied().unwrap_or(128);
    let rounds = args.get(2).copied().unwrap_or(5);
    set_direct_conv3x3(true);
    if !direct_conv3x3_active() {
        return Err("this CPU cannot run the direct kernels (no AVX-512F)".into());
    }
    println!(
        "batch {batch}, {size} px at level 0, {} rayon threads, median of {rounds}",
        rayon::current_num_threads()
    );
    println!(
        "| layer | path | forward ms | GFLOP/s | grad input ms | GFLOP/s | grad weight ms | GFLOP/s |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (mut level, mut px) = (0, size);
    let mut totals = [[0.0f64; 3]; 2];
    while px >= 8 {
        let c = 16 << level;
        let layers = if level == 0 {
            vec![(1, c), (c, c)]
        } else {
            vec![(c, c), (2 * c, c)]
        };
        for (ci, co) in layers {
            let (xs, ws) = ([batch, ci, px, px], [co, ci, 3, 3]);
            let x = randn(batch * ci * px * px, 1);
            let w = randn(co * ci * 9, 2);
            let dy = randn(batch * co * px * px, 3);
            let gflop = 2.0 * (batch * px * px * ci * co * 9) as f64 / 1e9;
            let mut times = [[vec![], vec![], vec![]], [vec![], vec![], vec![]]];
            for _ in 0..rounds {
                for (p, direct) in [true, false].into_iter().enumerate() {
                    set_direct_conv3x3(direct);
                    let t = Instant::now();
                    std::hint::black_box(conv2d_raw::forward(xs, ws, 1, 1, &x, &w)?);
                    times[p][0].push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    std::hint::black_box(conv2d_raw::grad_input(xs, ws, 1, 1, &dy, &w)?);
                    times[p][1].push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    std::hint::black_box(conv2d_raw::grad_weight(xs, ws, 1, 1, &x, &dy)?);
                    times[p][2].push(t.elapsed().as_secs_f64());
                }
            }
            for (p, name) in ["direct", "gemm"].into_iter().enumerate() {
                let m: Vec<f64> = times[p].iter().map(|t| median(t.clone())).collect();
                for (total, t) in totals[p].iter_mut().zip(&m) {
                    *total += t;
                }
                println!(
                    "| {ci}->{co} @ {px} | {name} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} |",
                    m[0] * 1e3,
                    gflop / m[0],
                    m[1] * 1e3,
                    gflop / m[1],
                    m[2] * 1e3,
                    gflop / m[2]
                );
            }
        }
        level += 1;
        px /= 2;
    }
    for (p, name) in ["direct", "gemm"].into_iter().enumerate() {
        let [f, gi, gw] = totals[p];
        println!(
            "total {name}: forward {:.1} ms, grad input {:.1} ms, grad weight {:.1} ms",
            f * 1e3,
            gi * 1e3,
            gw * 1e3
        );
    }
    set_direct_conv3x3(true);
    Ok(())
}
