//! Integration tests: the real handlers over HTTP, DynamoDB/KMS/Secrets Manager on moto,
//! Microsoft played by the strict stand-in.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod abuse;
mod akoauth;
mod apps;
mod audit;
mod autokitteh;
mod binding;
mod deployments;
mod events;
mod faults;
mod federation;
mod flow;
mod helpers;
mod load;
mod metrics;
mod openapi;
mod policies;
mod refresher;
mod restore;
mod retries;
mod secret_source;
mod secrets;
mod store_contract;
mod tokens;
