//! The system itself (server only): policy, lifecycle, credentials, the audit
//! chain, the stores and the use-cases over them.

pub mod audit;
pub mod clock;
pub mod diff;
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod passwords;
pub mod policy;
pub mod secrets;
pub mod service;
pub mod store;
pub mod tokens;
