//! Where a credential's next secret comes from, per kind: a login token
//! from `POST /auth/login`, or an access key made with the key it replaces
//! (or an agent's login). Scheduling, backoff, outputs, hooks, status and
//! metrics are shared (see [`crate::credential`]); only obtaining the secret
//! and the housekeeping around keys differ.

pub mod key;
