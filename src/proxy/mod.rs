//! The local API proxy (`[[proxy]]`, issue 17): work in progress. Only
//! the pure request rules exist so far ([`rewrite`]).

pub mod forward;
pub mod rewrite;
pub mod serve;
#[cfg(test)]
mod tests;
