//! The experiment config loader (`ExperimentConfig::from_toml_str`, with `--set` overrides) on
//! arbitrary bytes: the TOML text, then after the first NUL byte one override per line. It must
//! return rather than panic, and a config it accepts must validate and read back unchanged
//! from the resolved TOML lus writes beside every run (`config.resolved.toml`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use lus_experiments::config::ExperimentConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (text, overrides) = input.split_once('\0').unwrap_or((input, ""));
    let overrides: Vec<String> = overrides.lines().map(str::to_string).collect();
    let Ok(config) = ExperimentConfig::from_toml_str(text, &overrides) else {
        return;
    };
    config.validate().expect("an accepted config validates");
    let written = config
        .to_toml_string()
        .unwrap_or_else(|e| panic!("an accepted config cannot be written: {e:#}"));
    let again = ExperimentConfig::from_toml_str(&written, &[])
        .unwrap_or_else(|e| panic!("the resolved TOML of an accepted config: {e:#}\n{written}"));
    assert_eq!(again, config, "TOML round trip of {written}");
});
