//! What every function builds once at init: tracing, the AWS SDK config, the HTTP client.

use aws_config::BehaviorVersion;
use lambda_http::tracing::subscriber::filter::{LevelFilter, Targets};

/// The crates whose log lines we write: they log no secret at any level.
pub const OUR_CRATES: [&str; 6] = [
    "ms_oauth",
    "oauth_start",
    "oauth_redirect",
    "connection_api",
    "token_refresher",
    "ms_oauth_tests",
];

/// The most any library may log. Below it, the AWS SDK prints whole requests and responses
/// (`GetSecretValue`'s secret, KMS data keys, state items with their PKCE verifier) and
/// lambda_runtime whole events (codes, states, grants), whatever our own types redact.
pub const LIBRARY_LEVEL_CAP: LevelFilter = LevelFilter::WARN;

/// What is logged at `level`: our crates at that level, every other crate at most
/// [`LIBRARY_LEVEL_CAP`]. No level prints a secret.
pub fn log_filter(level: LevelFilter) -> Targets {
    Targets::new()
        .with_default(level.min(LIBRARY_LEVEL_CAP))
        .with_targets(OUR_CRATES.map(|c| (c, level)))
}

/// The level Lambda's logging configuration asks for (`AWS_LAMBDA_LOG_LEVEL`, else
/// `RUST_LOG`, as one level name); `INFO` when unset or not a level.
pub fn log_level(lookup: &dyn Fn(&str) -> Option<String>) -> LevelFilter {
    lookup("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|| lookup("RUST_LOG"))
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO)
}

/// Initialises tracing the way Lambda expects, level and format (text or JSON) from the
/// function's logging configuration (`AWS_LAMBDA_LOG_LEVEL`, `AWS_LAMBDA_LOG_FORMAT`), with
/// libraries capped (see [`log_filter`]).
pub fn init_tracing() {
    let lookup = |k: &str| std::env::var(k).ok();
    let json = lookup("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = try_init_tracing(log_level(&lookup), json, std::io::stdout);
}

/// Installs the global subscriber writing to `writer` (tests capture it); an error if one
/// is installed already.
pub fn try_init_tracing<W>(
    level: LevelFilter,
    json: bool,
    writer: W,
) -> Result<(), lambda_http::tracing::subscriber::util::TryInitError>
where
    W: for<'w> lambda_http::tracing::subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use lambda_http::tracing::subscriber::fmt;
    use lambda_http::tracing::subscriber::prelude::*;
    let registry = lambda_http::tracing::subscriber::registry().with(log_filter(level));
    if json {
        registry
            .with(fmt::layer().json().with_target(false).without_time().with_writer(writer))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_target(false).without_time().with_ansi(false).with_writer(writer))
            .try_init()
    }
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

#[cfg(test)]
mod tests {
    use lambda_http::tracing::Level;

    use super::*;

    #[test]
    fn no_level_lets_a_library_log_below_warn() {
        for level in [LevelFilter::TRACE, LevelFilter::DEBUG, LevelFilter::INFO] {
            let filter = log_filter(level);
            for library in [
                "aws_smithy_runtime::client::orchestrator",
                "aws_smithy_runtime::client::orchestrator::http",
                "lambda_runtime",
                "lambda_http",
                "hyper_util::client",
                "reqwest::connect",
            ] {
                assert!(!filter.would_enable(library, &Level::INFO), "{library} at {level}");
                assert!(filter.would_enable(library, &Level::WARN), "{library} warnings");
            }
            for ours in OUR_CRATES {
                let target = format!("{ours}::module");
                assert!(filter.would_enable(&target, &Level::INFO), "{ours} at {level}");
            }
        }
        let trace = log_filter(LevelFilter::TRACE);
        assert!(trace.would_enable("ms_oauth::store", &Level::TRACE));
        assert!(!log_filter(LevelFilter::WARN).would_enable("oauth_start", &Level::INFO));
    }

    #[test]
    fn the_level_comes_from_lambdas_logging_configuration() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(log_level(&env(&[])), LevelFilter::INFO);
        assert_eq!(log_level(&env(&[("AWS_LAMBDA_LOG_LEVEL", "TRACE")])), LevelFilter::TRACE);
        assert_eq!(
            log_level(&env(&[("AWS_LAMBDA_LOG_LEVEL", "error"), ("RUST_LOG", "debug")])),
            LevelFilter::ERROR
        );
        assert_eq!(log_level(&env(&[("RUST_LOG", "debug")])), LevelFilter::DEBUG);
        // Directives are not a level: no library can be turned up through them.
        assert_eq!(log_level(&env(&[("RUST_LOG", "aws_smithy_runtime=trace")])), LevelFilter::INFO);
    }
}
