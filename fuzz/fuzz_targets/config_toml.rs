//! The configuration file: TOML text to a validated config, or errors that say where.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    // Backend host names get a fixed address: no DNS query per input.
    match proxy::fuzzing::config_from_toml(text, Some(Path::new("fuzz.toml"))) {
        Ok(config) => {
            let _ = config.summary();
        }
        Err(errors) => {
            assert!(!errors.errors().is_empty());
            let _ = errors.lines();
            let _ = errors.to_string();
        }
    }
});
