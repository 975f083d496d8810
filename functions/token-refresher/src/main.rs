// The handler future, with its refresh, retries and write-back, is deeper than the default.
#![recursion_limit = "256"]

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use token_refresher::Refresher;

#[tokio::main]
async fn main() -> Result<(), Error> {
    ms_oauth::runtime::init_tracing();
    let refresher =
        ms_oauth::wiring::from_process_env(ms_oauth::config::Role::Refresher, Refresher::wire)
            .await?;
    let refresher = &refresher;
    run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        // A failed query, or a connection that keeps failing, fails the invocation, so the
        // function's error alarm sees it.
        let report = refresher.run().await?;
        if report.stuck > 0 {
            return Err(Error::from(format!(
                "{} connection(s) failed {} or more refreshes in a row",
                report.stuck,
                ms_oauth::tokens::STUCK_AFTER
            )));
        }
        Ok::<_, Error>(report)
    }))
    .await
}
