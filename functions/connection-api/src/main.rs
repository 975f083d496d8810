// The handler future, with its refresh, retries and write-back, is deeper than the default.
#![recursion_limit = "256"]

use std::convert::Infallible;

use connection_api::{ConnectionApi, handle};
use lambda_http::{Error, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ms_oauth::runtime::init_tracing();
    let api = ms_oauth::wiring::from_process_env(
        ms_oauth::config::Role::ConnectionApi,
        ConnectionApi::wire,
    )
    .await?;
    let api = &api;
    ms_oauth::runtime::run_http(service_fn(move |req| async move {
        Ok::<_, Infallible>(handle(api, req).await)
    }))
    .await
}
