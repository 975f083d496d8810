//! Microsoft OAuth 2.0 connection flow for AutoKitteh: the library both Lambda functions and
//! the `akoauth` tool are built on.

// The handlers' futures (a refresh with its retries, KMS, DynamoDB and the AutoKitteh
// write-back inside the deadline guard) are deeper than the compiler lays out by default.
#![recursion_limit = "256"]

pub mod apps;
pub mod audit;
pub mod autokitteh;
pub mod aws_http;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod events;
pub mod federation;
pub mod grant;
pub mod http;
pub mod metrics;
pub mod microsoft;
pub mod pages;
pub mod registration;
pub mod request;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod store;
pub mod tokens;
pub mod wiring;
pub mod writeback;

#[doc(hidden)]
/// Entry points of the fuzz targets in `fuzz/` (`fuzzing` feature).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod parser_properties;
/// Test doubles and helpers (`testing` feature): never compiled into the functions.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
