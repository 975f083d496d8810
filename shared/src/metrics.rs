//! Metrics as CloudWatch embedded metric format (EMF) lines on stdout: CloudWatch Logs turns
//! them into metrics, so recording one costs a formatted line and no call on the request
//! path. Dimensions are low-cardinality by construction: they are `&'static str` names with
//! values from closed sets (origins, auth types, failure classes, outcomes, statuses), never
//! a connection id, a user or a tenant.

use std::fmt;
use std::io::Write as _;
use std::sync::Mutex;

use serde_json::{Map, Value, json};

/// The namespace metrics go to unless `METRICS_NAMESPACE` names another.
pub const DEFAULT_NAMESPACE: &str = "AutoKitteh/MicrosoftOAuth";

/// Every metric this product records, by name.
pub mod name {
    /// A browser was sent to Microsoft to sign in. Dimensions: `Origin`, `AuthType`.
    pub const SIGN_IN_STARTED: &str = "SignInStarted";
    /// A sign-in saved its connection. Dimensions: `Origin`, `AuthType`.
    pub const SIGN_IN_COMPLETED: &str = "SignInCompleted";
    /// A sign-in (or admin consent) ended on an error page. Dimension: `Class`.
    pub const SIGN_IN_FAILED: &str = "SignInFailed";
    /// Time the redirect function took. Dimension: `Outcome` (`completed`, `failed`).
    pub const REDIRECT_LATENCY: &str = "RedirectLatency";
    /// A token renewal. Dimensions: `Trigger` (`request`, `schedule`), `Outcome`
    /// (`refreshed`, `stale`, `needs_reauth`, `app_misconfigured`, `failed`, and
    /// `cooldown`: a request that shared a refresh failure of moments ago and called nothing).
    pub const REFRESH: &str = "Refresh";
    /// An answer of the connection API. Dimensions: `Operation`, `Status`.
    pub const API_ANSWER: &str = "ApiAnswer";
    /// Connections a refresher run found due (the backlog).
    pub const REFRESHER_DUE: &str = "RefresherDue";
    /// How long a refresher run took.
    pub const REFRESHER_RUN_DURATION: &str = "RefresherRunDuration";
    /// Connections whose refresh keeps failing, in a run.
    pub const REFRESHER_STUCK: &str = "RefresherStuck";
    /// A write of vars back to AutoKitteh. Dimensions: `Kind` (`refreshed`, `needs_reauth`,
    /// `disconnected`), `Outcome` (`ok`, `failed`).
    pub const WRITE_BACK: &str = "AutoKittehWriteBack";
    /// A request or run that failed because a dependency did. Dimension: `Dependency`
    /// (`dynamodb`, `kms`, `secrets_manager`, `microsoft`, `autokitteh`, `sts` (the client
    /// assertion with AWS federation), `eventbridge`: an
    /// audit event the bus did not take, still in the log).
    pub const DEPENDENCY_FAILURE: &str = "DependencyFailure";
    /// Days until a credential in use stops working. Dimension: `Credential`
    /// (`client_secret`: the server-wide app's secret, from the date recorded with it;
    /// `app_certificate`: a connection's own app's certificate, when it is used).
    pub const CREDENTIAL_DAYS_LEFT: &str = "CredentialDaysLeft";
    /// Many connections of one tenant failed the same way within minutes (the event
    /// `Tenant Connections Failing` names the tenant). Dimension: `Class`.
    pub const TENANT_INCIDENT: &str = "TenantIncident";
    /// Microsoft refused the server-wide client secret and the other version was tried.
    /// Dimensions: `Version` (`current`: a rotation read again, `previous`: the value
    /// before the last rotation), `Outcome` (`ok`, `failed`).
    pub const CLIENT_SECRET_RETRY: &str = "ClientSecretRetry";

    /// Every name above.
    pub const ALL: &[&str] = &[
        SIGN_IN_STARTED,
        SIGN_IN_COMPLETED,
        SIGN_IN_FAILED,
        REDIRECT_LATENCY,
        REFRESH,
        API_ANSWER,
        REFRESHER_DUE,
        REFRESHER_RUN_DURATION,
        REFRESHER_STUCK,
        WRITE_BACK,
        DEPENDENCY_FAILURE,
        CREDENTIAL_DAYS_LEFT,
        TENANT_INCIDENT,
        CLIENT_SECRET_RETRY,
    ];
}

/// Every dimension and the closed set of values it takes. The dashboard and alarms in the
/// template are checked against this table, and tests check every recorded value.
pub const DIMENSIONS: &[(&str, &[&str])] = &[
    ("Origin", &["web", "cli", "vscode", "dash"]),
    ("AuthType", &["oauthDefault", "oauthPrivate", "daemonApp"]),
    (
        "Class",
        &[
            "sign_in_again",
            "admin_consent",
            "app_misconfigured",
            "transient",
            "refused",
            "internal",
        ],
    ),
    (
        "Outcome",
        &[
            "completed",
            "failed",
            "refreshed",
            "stale",
            "needs_reauth",
            "app_misconfigured",
            "cooldown",
            "ok",
        ],
    ),
    ("Trigger", &["request", "schedule"]),
    (
        "Operation",
        &["get_token", "get_app", "set_app", "remove_app", "get_connection", "disconnect", "other"],
    ),
    ("Status", &["200", "400", "404", "405", "409", "413", "422", "500", "502", "503", "other"]),
    ("Kind", &["refreshed", "needs_reauth", "disconnected"]),
    (
        "Dependency",
        &["dynamodb", "kms", "secrets_manager", "microsoft", "autokitteh", "eventbridge", "sts"],
    ),
    ("Credential", &["client_secret", "app_certificate"]),
    ("Version", &["current", "previous"]),
];

/// The values dimension `key` takes; `None` for a name that is not a dimension.
pub fn dimension_values(key: &str) -> Option<&'static [&'static str]> {
    DIMENSIONS.iter().find(|(k, _)| *k == key).map(|(_, values)| *values)
}

/// The unit of a metric value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    None,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::None => "None",
        }
    }
}

/// One value of one metric, with its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub value: f64,
    pub unit: Unit,
    pub dimensions: Vec<(&'static str, &'static str)>,
}

impl Metric {
    /// One occurrence.
    pub fn count(name: &'static str, dimensions: &[(&'static str, &'static str)]) -> Self {
        Self { name, value: 1.0, unit: Unit::Count, dimensions: dimensions.to_vec() }
    }

    /// A number of things.
    pub fn amount(name: &'static str, value: u64) -> Self {
        Self { name, value: value as f64, unit: Unit::Count, dimensions: Vec::new() }
    }

    /// A measured value without a unit (days, a ratio).
    pub fn gauge(
        name: &'static str,
        value: f64,
        dimensions: &[(&'static str, &'static str)],
    ) -> Self {
        Self { name, value, unit: Unit::None, dimensions: dimensions.to_vec() }
    }

    /// A duration.
    pub fn millis(
        name: &'static str,
        elapsed: std::time::Duration,
        dimensions: &[(&'static str, &'static str)],
    ) -> Self {
        let value = elapsed.as_secs_f64() * 1000.0;
        Self { name, value, unit: Unit::Milliseconds, dimensions: dimensions.to_vec() }
    }
}

/// Where metrics go.
pub trait Metrics: Send + Sync + fmt::Debug {
    fn record(&self, metric: Metric);
}

/// Metrics dropped (tests, local runs).
#[derive(Debug, Default)]
pub struct NoMetrics;

impl Metrics for NoMetrics {
    fn record(&self, _metric: Metric) {}
}

/// Metrics as EMF lines on stdout (Lambda sends stdout to CloudWatch Logs).
#[derive(Debug, Clone)]
pub struct EmfMetrics {
    namespace: String,
}

impl EmfMetrics {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self { namespace: namespace.into() }
    }
}

impl Metrics for EmfMetrics {
    fn record(&self, metric: Metric) {
        let now = time::OffsetDateTime::now_utc();
        let millis = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let mut line = emf_line(&self.namespace, &metric, millis);
        line.push('\n');
        // One write per line, so lines of concurrent requests never interleave.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// The EMF line of `metric`: the value and dimensions at the top level, and the directive
/// telling CloudWatch which is which. With dimensions, the metric is also recorded without
/// them, so totals and alarms need no sum over every value.
pub fn emf_line(namespace: &str, metric: &Metric, timestamp_millis: i64) -> String {
    let names: Vec<&str> = metric.dimensions.iter().map(|(k, _)| *k).collect();
    let sets = if names.is_empty() { json!([[]]) } else { json!([names, []]) };
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_millis,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": sets,
                "Metrics": [{"Name": metric.name, "Unit": metric.unit.as_str()}],
            }],
        }),
    );
    for (key, value) in &metric.dimensions {
        root.insert((*key).into(), Value::String((*value).into()));
    }
    root.insert(metric.name.into(), json!(metric.value));
    Value::Object(root).to_string()
}

/// The dependency whose outage a store error is, for [`name::DEPENDENCY_FAILURE`].
pub fn store_dependency(e: &crate::store::StoreError) -> Option<&'static str> {
    matches!(e, crate::store::StoreError::Unavailable { .. }).then_some("dynamodb")
}

/// The dependency whose outage a sealing error is.
pub fn crypto_dependency(e: &crate::crypto::CryptoError) -> Option<&'static str> {
    use crate::crypto::CryptoError;
    match e {
        CryptoError::Kms(_) => Some("kms"),
        CryptoError::Shares(_) => Some("dynamodb"),
        _ => None,
    }
}

/// The dependency whose outage a token endpoint error is (refusals are not outages).
pub fn token_dependency(e: &crate::microsoft::TokenError) -> Option<&'static str> {
    use crate::microsoft::TokenError;
    match e {
        TokenError::Unavailable(_) | TokenError::Malformed => Some("microsoft"),
        TokenError::Federation(f) if f.is_transient() => Some("sts"),
        _ => None,
    }
}

/// Records one [`name::DEPENDENCY_FAILURE`] when `dependency` names one.
pub fn record_dependency_failure(metrics: &dyn Metrics, dependency: Option<&'static str>) {
    if let Some(dependency) = dependency {
        metrics.record(Metric::count(name::DEPENDENCY_FAILURE, &[("Dependency", dependency)]));
    }
}

/// Records which version of the client secret a retry used, and whether Microsoft took it.
pub fn record_secret_retry(
    metrics: &dyn Metrics,
    version: crate::secrets::SecretVersion,
    worked: bool,
) {
    let dimensions =
        [("Version", version.as_str()), ("Outcome", if worked { "ok" } else { "failed" })];
    metrics.record(Metric::count(name::CLIENT_SECRET_RETRY, &dimensions));
    if worked {
        tracing::info!(
            version = version.as_str(),
            "Microsoft took the other version of the client secret"
        );
    }
}

/// Set by Lambda in every function's environment.
pub const LAMBDA_FUNCTION_NAME: &str = "AWS_LAMBDA_FUNCTION_NAME";

/// The metrics sink from the environment: on Lambda, EMF lines in `METRICS_NAMESPACE`
/// (default [`DEFAULT_NAMESPACE`]); elsewhere none, so tools that print to stdout
/// (`akoauth token`) print only what they are asked for.
pub fn from_env(lookup: &dyn Fn(&str) -> Option<String>) -> std::sync::Arc<dyn Metrics> {
    // Off Lambda (akoauth, local runs) nothing is recorded, and the namespace is not read.
    if lookup(LAMBDA_FUNCTION_NAME).is_none_or(|n| n.trim().is_empty()) {
        return std::sync::Arc::new(NoMetrics);
    }
    let namespace = lookup(crate::config::METRICS_NAMESPACE)
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    std::sync::Arc::new(EmfMetrics::new(namespace))
}

/// Keeps metrics in memory, for tests.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RecordedMetrics(Mutex<Vec<Metric>>);

impl RecordedMetrics {
    /// Everything recorded so far.
    pub fn all(&self) -> Vec<Metric> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// How many times `name` was recorded with every one of `dimensions`.
    pub fn count(&self, name: &str, dimensions: &[(&str, &str)]) -> usize {
        self.all()
            .iter()
            .filter(|m| m.name == name)
            .filter(|m| dimensions.iter().all(|d| m.dimensions.iter().any(|(k, v)| (*k, *v) == *d)))
            .count()
    }
}

impl Metrics for RecordedMetrics {
    fn record(&self, metric: Metric) {
        if let Ok(mut all) = self.0.lock() {
            all.push(metric);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_the_embedded_metric_format() {
        let metric = Metric::count(
            name::SIGN_IN_STARTED,
            &[("Origin", "web"), ("AuthType", "oauthDefault")],
        );
        let line: Value =
            serde_json::from_str(&emf_line("NS", &metric, 1_800_000_000_000)).unwrap();
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(line["_aws"]["Timestamp"], 1_800_000_000_000_i64);
        assert_eq!(directive["Namespace"], "NS");
        assert_eq!(directive["Dimensions"], json!([["Origin", "AuthType"], []]));
        assert_eq!(directive["Metrics"], json!([{"Name": "SignInStarted", "Unit": "Count"}]));
        assert_eq!(line["Origin"], "web");
        assert_eq!(line["AuthType"], "oauthDefault");
        assert_eq!(line["SignInStarted"], 1.0);

        let run = Metric::millis(
            name::REFRESHER_RUN_DURATION,
            std::time::Duration::from_millis(1500),
            &[],
        );
        let line: Value = serde_json::from_str(&emf_line("NS", &run, 0)).unwrap();
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[]]));
        assert_eq!(line["RefresherRunDuration"], 1500.0);
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"], "Milliseconds");
    }

    #[test]
    fn the_namespace_comes_from_the_environment_and_only_lambda_gets_lines() {
        let given = |v: Option<&str>| {
            let v = v.map(str::to_owned);
            format!(
                "{:?}",
                from_env(&move |k| match k {
                    LAMBDA_FUNCTION_NAME => Some("stack-oauth-start".to_owned()),
                    _ => v.clone(),
                })
            )
        };
        let off_lambda =
            format!("{:?}", from_env(&|k| (k == "METRICS_NAMESPACE").then(|| "X".into())));
        assert_eq!(off_lambda, "NoMetrics");
        assert!(given(None).contains(DEFAULT_NAMESPACE));
        assert!(given(Some(" ")).contains(DEFAULT_NAMESPACE));
        assert!(given(Some("Mine/OAuth")).contains("Mine/OAuth"));
    }
}
