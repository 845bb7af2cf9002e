//! The countersign process: command line, configuration, the HTTP edges
//! (JSON API, MCP gateway, pages, health) and their wiring around `app::core`.

pub mod api;
pub mod cli;
pub mod config;
pub mod limits;
pub mod mcp;
pub mod notify;
pub mod ops;
pub mod sessions;
pub mod startup;
pub mod telemetry;
pub mod web;
