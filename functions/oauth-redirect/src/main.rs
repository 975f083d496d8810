// The handler future, with its refresh, retries and write-back, is deeper than the default.
#![recursion_limit = "256"]

use std::convert::Infallible;

use lambda_http::{Error, service_fn};
use oauth_redirect::{RedirectService, handle};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ms_oauth::runtime::init_tracing();
    let service =
        ms_oauth::wiring::from_process_env(ms_oauth::config::Role::Redirect, RedirectService::wire)
            .await?;
    let service = &service;
    ms_oauth::runtime::run_http(service_fn(move |req| async move {
        Ok::<_, Infallible>(handle(service, req).await)
    }))
    .await
}
