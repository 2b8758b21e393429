//! Output files: what they hold ([`render`], in a [`Format`]) and how they
//! get to disk ([`write`](mod@write)). The two are separate so the formats are pure
//! functions and the writer knows nothing about tokens.

pub mod format;
pub mod render;
pub mod write;

pub use format::Format;
