//! Microsoft OAuth 2.0 connection flow for AutoKitteh: the library both Lambda functions and
//! the `akoauth` tool are built on.

pub mod autokitteh;
pub mod aws_http;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod events;
pub mod grant;
pub mod http;
pub mod microsoft;
pub mod pages;
pub mod request;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod store;
pub mod tokens;
pub mod writeback;

#[cfg(test)]
mod parser_properties;
#[doc(hidden)]
pub mod testing;
