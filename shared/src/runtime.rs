//! What every function builds once at init: tracing, the AWS SDK config, the HTTP client.

use aws_config::BehaviorVersion;

/// Initialises tracing the way Lambda expects: level and format (text or JSON) come from the
/// function's logging configuration (`AWS_LAMBDA_LOG_LEVEL`, `AWS_LAMBDA_LOG_FORMAT`).
pub fn init_tracing() {
    lambda_http::tracing::init_default_subscriber();
}

/// Loads the AWS SDK configuration once, with our HTTP client. `AWS_ENDPOINT_URL` (or a
/// per-service variant) points every client at an emulator for local runs and tests.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config_loader().load().await
}

/// The SDK's default configuration loader with our HTTP client, for callers that add to it.
///
/// Lambda hands a function its role's credentials in `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, the first source the default chain
/// tries. When they are set they are read directly: building the rest of the chain (web
/// identity with its own STS client, SSO, container and instance metadata) cost about a fifth
/// of a function's Init and is never used there. Elsewhere (`akoauth` on a laptop) the
/// default chain applies unchanged.
pub fn aws_config_loader() -> aws_config::ConfigLoader {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::aws_http::ReqwestSdkClient::shared());
    let from_env = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .iter()
        .all(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if from_env {
        loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        )
    } else {
        loader
    }
}

/// How every function builds its state: from variables and one AWS SDK configuration.
pub type FromSdk<T> = fn(
    &dyn Fn(&str) -> Option<String>,
    &aws_config::SdkConfig,
) -> Result<T, crate::config::ConfigError>;

/// Builds a function's state from the process environment and the default AWS SDK
/// configuration; a bad variable fails here, at init, with its name.
pub async fn from_process_env<T>(from_sdk: FromSdk<T>) -> Result<T, crate::config::ConfigError> {
    from_sdk(&crate::config::env_lookup, &aws_config().await)
}

/// Reads the start-link key source (`START_LINK_KEY` or `START_LINK_KEY_ARN`) and, for an
/// ARN, builds the Secrets Manager client that will read it.
pub fn secret_from_env(
    sdk: &aws_config::SdkConfig,
    lookup: &dyn Fn(&str) -> Option<String>,
    value_var: &'static str,
    arn_var: &'static str,
) -> Result<crate::secrets::CachedSecret, crate::config::ConfigError> {
    let source = crate::config::secret_source(lookup, value_var, arn_var)?;
    let client = match source {
        crate::config::SecretSource::SecretsManager { .. } => {
            Some(aws_sdk_secretsmanager::Client::new(sdk))
        }
        crate::config::SecretSource::Value(_) => None,
    };
    Ok(crate::secrets::CachedSecret::new(source, client))
}

/// The HTTP method guard both functions share: the flow is browser navigations (GET) only;
/// a HEAD from a link previewer must not start or consume anything.
pub fn is_navigation(method: &http::Method) -> bool {
    method == http::Method::GET
}

/// The event sink named by `EVENT_BUS_NAME`, or none when it is unset.
pub fn events_from_env(
    sdk: &aws_config::SdkConfig,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> std::sync::Arc<dyn crate::events::Events> {
    match lookup(crate::config::EVENT_BUS_NAME).filter(|b| !b.trim().is_empty()) {
        Some(bus) => std::sync::Arc::new(crate::events::EventBridgeEvents::new(
            aws_sdk_eventbridge::Client::new(sdk),
            bus.trim(),
        )),
        None => std::sync::Arc::new(crate::events::NoEvents),
    }
}

/// The one outbound HTTP client of a function (Microsoft and AutoKitteh share it, so a
/// cold start builds one TLS client configuration, not one per peer).
pub fn http_client(
    config: &crate::config::Config,
) -> Result<reqwest::Client, crate::config::ConfigError> {
    crate::http::build_client(config.http_timeout).map_err(|e| crate::config::ConfigError {
        var: crate::config::MICROSOFT_AUTHORITY_HOST,
        problem: format!("cannot build the HTTP client: {e}"),
    })
}

/// The AutoKitteh client on `http` when `AUTOKITTEH_API_URL` is set (AutoKitteh mode).
pub fn autokitteh_from_config(
    config: &crate::config::Config,
    http: &reqwest::Client,
) -> Option<crate::autokitteh::AutoKitteh> {
    let ak = config.autokitteh.as_ref()?;
    Some(crate::autokitteh::AutoKitteh::new(ak.api_url.clone(), std::sync::Arc::new(http.clone())))
}
