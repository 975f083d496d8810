use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use token_refresher::Refresher;

#[tokio::main]
async fn main() -> Result<(), Error> {
    ms_oauth::runtime::init_tracing();
    let refresher = ms_oauth::runtime::from_process_env(Refresher::from_sdk).await?;
    let refresher = &refresher;
    run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        // A failed query fails the invocation, so the error alarm sees it.
        Ok::<_, Error>(refresher.run().await?)
    }))
    .await
}
