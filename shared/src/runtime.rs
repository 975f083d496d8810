//! What every function builds once at init: tracing, the AWS SDK config, the HTTP client.

use aws_config::BehaviorVersion;

/// Initialises tracing the way Lambda expects: level and format (text or JSON) come from the
/// function's logging configuration (`AWS_LAMBDA_LOG_LEVEL`, `AWS_LAMBDA_LOG_FORMAT`).
pub fn init_tracing() {
    lambda_http::tracing::init_default_subscriber();
}

/// Loads the AWS SDK configuration once. `AWS_ENDPOINT_URL` (or a per-service variant) points
/// every client at an emulator for local runs and tests.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}
