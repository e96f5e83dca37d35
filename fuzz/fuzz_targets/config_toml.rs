//! The configuration file: TOML text to a validated config, or errors that say where.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use proxy::config::Config;

fuzz_target!(|text: &str| {
    match Config::from_toml_str(text, Some(Path::new("fuzz.toml"))) {
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
