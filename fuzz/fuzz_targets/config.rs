//! Arbitrary text into the config parser and validator. It must answer
//! Ok or a ConfigError, never panic; an error's message must not quote an
//! inline password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voipbin_tokend::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Validation reads files the config names (ca-file, password-file
    // modes): keep the fuzzer away from devices and pseudo-files, where a
    // read could block or never end.
    if ["/dev", "/proc", "/sys", "/run"].iter().any(|p| text.contains(p)) {
        return;
    }
    let path = std::path::Path::new("/nonexistent/voipbin-tokend-fuzz/config.toml");
    match Config::parse(text, path) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
