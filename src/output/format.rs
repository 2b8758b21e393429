//! The formats an output file may have: which bytes [`super::render`]
//! makes of a token. The config names one per output.

use std::fmt;

/// What an output file holds; see [`super::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Raw,
    Env { variable: String },
    Shell { variable: String },
    Json,
    Template { template: String },
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Raw => f.write_str("raw"),
            Format::Env { variable } => write!(f, "env ({variable})"),
            Format::Shell { variable } => write!(f, "shell ({variable})"),
            Format::Json => f.write_str("json"),
            Format::Template { .. } => f.write_str("template"),
        }
    }
}
