//! What the end-to-end tests of the `lus` binary share.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs the `lus` binary built for these tests.
pub fn lus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lus"))
        .args(args)
        .output()
        .expect("the lus binary runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
