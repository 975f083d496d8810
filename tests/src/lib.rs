//! Test support for the Microsoft OAuth functions: a strict stand-in identity platform, an
//! AWS emulator launcher with resource set-up, and a local server running the real handlers
//! behind API Gateway events.

pub mod aws;
pub mod chaos;
pub mod load;
pub mod local;
pub mod standin;
