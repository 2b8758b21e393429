//! Access keys (`kind = "access-key"`), end to end against the stand-in's
//! key API.

mod identity;
mod kill9;
mod liveness;
mod operations;
mod rotation;
