//! Every SQL statement the system runs, grouped by what it touches. Each is
//! written once for both databases (see `on!`).

pub mod audit;
pub mod controls;
pub mod jobs;
pub mod keys;
pub mod notify;
pub mod policy;
pub mod proposals;
pub mod runs;
pub mod users;
