//! placeholder
pub mod clock;
pub mod config;
pub mod event;
pub mod ratelimit;
pub mod stats;
pub mod tracker;
