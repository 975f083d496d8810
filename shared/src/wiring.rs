//! The one wiring: from a role's variables and one AWS SDK configuration to every client and
//! part a service is built from. Each function's `main`, `akoauth`, the local stack and every
//! integration test build through it, so what a deployment runs is what the tests run.
//!
//! Tests change only its seams ([`Overrides`]: the clock, the metric, audit and event sinks,
//! the endpoint of one AWS service, timeouts), never how the parts fit together. Nothing is
//! built before a service asks for it: the start function never builds a KMS or Secrets
//! Manager client for the client secret.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditTrail;
use crate::autokitteh::AutoKitteh;
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, ConfigError, Role, SecretSource};
use crate::crypto::{DataKeys, KeyShares, KmsDataKeys};
use crate::events::Events;
use crate::federation::{ClientAuthMode, FederatedAssertions};
use crate::metrics::Metrics;
use crate::secrets::CachedSecret;
use crate::store::{DynamoKeyShares, DynamoStore, Store};
use crate::writeback::WriteBack;

/// The AWS services the product calls, for [`Overrides::endpoints`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsService {
    DynamoDb,
    Kms,
    SecretsManager,
    Sts,
    EventBridge,
}

/// The seams a test may change. Production uses none of them.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub clock: Option<Arc<dyn Clock>>,
    pub metrics: Option<Arc<dyn Metrics>>,
    pub audit: Option<Arc<dyn AuditTrail>>,
    pub events: Option<Arc<dyn Events>>,
    /// One AWS service at another endpoint (a dead or stalled one).
    pub endpoints: Vec<(AwsService, String)>,
    /// The timeout of outbound HTTP calls (Microsoft, AutoKitteh), instead of 10 s.
    pub http_timeout: Option<Duration>,
    /// The first wait between attempts at the token endpoint, instead of 200 ms.
    pub retry_backoff: Option<Duration>,
    /// How long secrets from Secrets Manager are cached, instead of the default.
    pub secret_ttl: Option<Duration>,
}

/// The first wait between attempts at the token endpoint.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// Builds the parts of one role's services from its variables.
pub struct Wiring<'a> {
    role: Role,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    sdk: &'a aws_config::SdkConfig,
    overrides: Overrides,
}

impl std::fmt::Debug for Wiring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring").field("role", &self.role).finish_non_exhaustive()
    }
}

impl<'a> Wiring<'a> {
    /// The wiring of `role` from `lookup` (a variable's value, if set) and `sdk`.
    pub fn new(
        role: Role,
        lookup: &'a dyn Fn(&str) -> Option<String>,
        sdk: &'a aws_config::SdkConfig,
    ) -> Self {
        Self { role, lookup, sdk, overrides: Overrides::default() }
    }

    /// The same wiring with `overrides` (tests).
    pub fn with_overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// Which role this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A variable's value, as this role's environment has it.
    pub fn var(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// The role's configuration, validated.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::for_role(self.role, self.lookup)?;
        if let Some(timeout) = self.overrides.http_timeout {
            config.http_timeout = timeout;
        }
        Ok(config)
    }

    /// A required variable of the role.
    pub fn required(&self, var: &'static str) -> Result<String, ConfigError> {
        config::required(self.lookup, var)
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.overrides.clock.clone().unwrap_or_else(|| Arc::new(SystemClock))
    }

    /// The first wait between attempts at the token endpoint.
    pub fn retry_backoff(&self) -> Duration {
        self.overrides.retry_backoff.unwrap_or(RETRY_BACKOFF)
    }

    fn endpoint(&self, service: AwsService) -> Option<&str> {
        self.overrides.endpoints.iter().find(|(s, _)| *s == service).map(|(_, e)| e.as_str())
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let mut builder = aws_sdk_dynamodb::config::Builder::from(self.sdk);
        if let Some(endpoint) = self.endpoint(AwsService::DynamoDb) {
            builder = builder.endpoint_url(endpoint);
        }
        aws_sdk_dynamodb::Client::from_conf(builder.build())
    }

    pub fn kms(&self) -> aws_sdk_kms::Client {
        let mut builder = aws_sdk_kms::config::Builder::from(self.sdk);
        if let Some(endpoint) = self.endpoint(AwsService::Kms) {
            builder = builder.endpoint_url(endpoint);
        }
        aws_sdk_kms::Client::from_conf(builder.build())
    }

    pub fn secrets_manager(&self) -> aws_sdk_secretsmanager::Client {
        let mut builder = aws_sdk_secretsmanager::config::Builder::from(self.sdk);
        if let Some(endpoint) = self.endpoint(AwsService::SecretsManager) {
            builder = builder.endpoint_url(endpoint);
        }
        aws_sdk_secretsmanager::Client::from_conf(builder.build())
    }

    pub fn sts(&self) -> aws_sdk_sts::Client {
        let mut builder = aws_sdk_sts::config::Builder::from(self.sdk);
        if let Some(endpoint) = self.endpoint(AwsService::Sts) {
            builder = builder.endpoint_url(endpoint);
        }
        aws_sdk_sts::Client::from_conf(builder.build())
    }

    pub fn eventbridge(&self) -> aws_sdk_eventbridge::Client {
        let mut builder = aws_sdk_eventbridge::config::Builder::from(self.sdk);
        if let Some(endpoint) = self.endpoint(AwsService::EventBridge) {
            builder = builder.endpoint_url(endpoint);
        }
        aws_sdk_eventbridge::Client::from_conf(builder.build())
    }

    /// The table (`OAUTH_TABLE_NAME`) on `dynamodb`.
    pub fn store(&self, config: &Config, dynamodb: &aws_sdk_dynamodb::Client) -> Arc<dyn Store> {
        Arc::new(DynamoStore::new(dynamodb.clone(), config.table_name.clone()))
    }

    /// The KMS key tokens are sealed with (`TOKEN_KMS_KEY_ID`).
    pub fn data_keys(&self) -> Result<Arc<dyn DataKeys>, ConfigError> {
        let key = self.required(config::TOKEN_KMS_KEY_ID)?;
        Ok(Arc::new(KmsDataKeys::new(self.kms(), key)))
    }

    /// The key-share table (`KEY_SHARES_TABLE_NAME`), sharing the token table's client.
    pub fn key_shares(
        &self,
        dynamodb: &aws_sdk_dynamodb::Client,
    ) -> Result<Arc<dyn KeyShares>, ConfigError> {
        let table = self.required(config::KEY_SHARES_TABLE_NAME)?;
        Ok(Arc::new(DynamoKeyShares::new(dynamodb.clone(), table)))
    }

    /// A secret given as a value (`value_var`, local runs) or in Secrets Manager
    /// (`arn_var`); exactly one must be set.
    pub fn secret(
        &self,
        value_var: &'static str,
        arn_var: &'static str,
    ) -> Result<CachedSecret, ConfigError> {
        let source = config::secret_source(self.lookup, value_var, arn_var)?;
        let client = match source {
            SecretSource::SecretsManager { .. } => Some(self.secrets_manager()),
            SecretSource::Value(_) => None,
        };
        Ok(match self.overrides.secret_ttl {
            Some(ttl) => CachedSecret::with_ttl(source, client, ttl),
            None => CachedSecret::new(source, client),
        })
    }

    /// The server-wide app's credential: with `MICROSOFT_CLIENT_AUTH=aws_federation`, client
    /// assertions from AWS STS and no secret at all (the returned secret is an empty value no
    /// code path reads); otherwise the client secret (`MICROSOFT_CLIENT_SECRET[_ARN]`).
    pub fn client_credential(
        &self,
    ) -> Result<(CachedSecret, Option<Arc<FederatedAssertions>>), ConfigError> {
        let mode = ClientAuthMode::parse(self.var(config::MICROSOFT_CLIENT_AUTH).as_deref())
            .map_err(|problem| ConfigError { var: config::MICROSOFT_CLIENT_AUTH, problem })?;
        match mode {
            ClientAuthMode::Secret => Ok((
                self.secret(config::MICROSOFT_CLIENT_SECRET, config::MICROSOFT_CLIENT_SECRET_ARN)?,
                None,
            )),
            ClientAuthMode::AwsFederation => {
                for var in [config::MICROSOFT_CLIENT_SECRET, config::MICROSOFT_CLIENT_SECRET_ARN] {
                    if self.var(var).is_some_and(|v| !v.trim().is_empty()) {
                        return Err(ConfigError {
                            var,
                            problem: "must not be set with MICROSOFT_CLIENT_AUTH=aws_federation (no secret is used)".into(),
                        });
                    }
                }
                let unused = CachedSecret::new(
                    SecretSource::Value(secrecy::SecretString::from(String::new())),
                    None,
                );
                Ok((unused, Some(Arc::new(FederatedAssertions::new(self.sts())))))
            }
        }
    }

    /// The one outbound HTTP client of a function (Microsoft and AutoKitteh share it, so a
    /// cold start builds one TLS client configuration, not one per peer).
    pub fn http(&self, config: &Config) -> Result<reqwest::Client, ConfigError> {
        crate::http::build_client(config.http_timeout).map_err(|e| ConfigError {
            var: config::MICROSOFT_AUTHORITY_HOST,
            problem: format!("cannot build the HTTP client: {e}"),
        })
    }

    /// The AutoKitteh client on `http` when `AUTOKITTEH_API_URL` is set (AutoKitteh mode).
    pub fn autokitteh(&self, config: &Config, http: &reqwest::Client) -> Option<AutoKitteh> {
        let ak = config.autokitteh.as_ref()?;
        Some(AutoKitteh::new(ak.api_url.clone(), Arc::new(http.clone())))
    }

    /// The write-back to AutoKitteh when `AUTOKITTEH_API_TOKEN[_ARN]` is set; it needs
    /// `AUTOKITTEH_API_URL` (where to write).
    pub fn write_back(
        &self,
        config: &Config,
        http: &reqwest::Client,
    ) -> Result<Option<Arc<WriteBack>>, ConfigError> {
        let given = [config::AUTOKITTEH_API_TOKEN, config::AUTOKITTEH_API_TOKEN_ARN]
            .into_iter()
            .find(|var| self.var(var).is_some_and(|v| !v.trim().is_empty()));
        let Some(var) = given else { return Ok(None) };
        let Some(autokitteh) = self.autokitteh(config, http) else {
            return Err(ConfigError {
                var,
                problem: format!(
                    "needs {}, the AutoKitteh it writes to",
                    config::AUTOKITTEH_API_URL
                ),
            });
        };
        let token = self.secret(config::AUTOKITTEH_API_TOKEN, config::AUTOKITTEH_API_TOKEN_ARN)?;
        Ok(Some(Arc::new(WriteBack::new(autokitteh, token))))
    }

    /// The event sink named by `EVENT_BUS_NAME`, or none when it is unset.
    pub fn events(&self) -> Arc<dyn Events> {
        if let Some(events) = &self.overrides.events {
            return events.clone();
        }
        match self.var(config::EVENT_BUS_NAME).filter(|b| !b.trim().is_empty()) {
            Some(bus) => {
                Arc::new(crate::events::EventBridgeEvents::new(self.eventbridge(), bus.trim()))
            }
            None => Arc::new(crate::events::NoEvents),
        }
    }

    /// Metrics and the audit trail (`METRICS_NAMESPACE`, `AUDIT_BUS_NAME`; lines on Lambda).
    pub fn observability(&self) -> (Arc<dyn Metrics>, Arc<dyn AuditTrail>) {
        let metrics =
            self.overrides.metrics.clone().unwrap_or_else(|| crate::metrics::from_env(self.lookup));
        let audit = match &self.overrides.audit {
            Some(audit) => audit.clone(),
            None => crate::audit::from_env(|| self.eventbridge(), self.lookup, metrics.clone()),
        };
        (metrics, audit)
    }
}

/// Builds a service from the process environment and the default AWS SDK configuration, as
/// `role`; a bad variable fails here, at init, with its name.
pub async fn from_process_env<T>(
    role: Role,
    build: fn(&Wiring<'_>) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let sdk = crate::runtime::aws_config().await;
    build(&Wiring::new(role, &config::env_lookup, &sdk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk() -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build()
    }

    #[test]
    fn secretless_client_authentication_refuses_a_secret_beside_it() {
        let sdk = sdk();
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let federated = vars(&[(config::MICROSOFT_CLIENT_AUTH, "aws_federation")]);
        let wiring = Wiring::new(Role::Redirect, &federated, &sdk);
        assert!(wiring.client_credential().unwrap().1.is_some());
        let both = vars(&[
            (config::MICROSOFT_CLIENT_AUTH, "aws_federation"),
            (config::MICROSOFT_CLIENT_SECRET_ARN, "arn:aws:secretsmanager:us-east-1:1:secret:s"),
        ]);
        let error = Wiring::new(Role::Redirect, &both, &sdk).client_credential().unwrap_err();
        assert_eq!(error.var, config::MICROSOFT_CLIENT_SECRET_ARN);
        let neither = vars(&[]);
        let error = Wiring::new(Role::Redirect, &neither, &sdk).client_credential().unwrap_err();
        assert_eq!(error.var, config::MICROSOFT_CLIENT_SECRET);
    }

    #[test]
    fn overrides_change_only_the_seams() {
        let sdk = sdk();
        let none = |_: &str| None;
        let wiring = Wiring::new(Role::Refresher, &none, &sdk);
        assert_eq!(wiring.retry_backoff(), RETRY_BACKOFF);
        let wiring = wiring.with_overrides(Overrides {
            retry_backoff: Some(Duration::from_millis(5)),
            endpoints: vec![(AwsService::Kms, "http://127.0.0.1:9".into())],
            ..Overrides::default()
        });
        assert_eq!(wiring.retry_backoff(), Duration::from_millis(5));
        assert_eq!(wiring.endpoint(AwsService::Kms), Some("http://127.0.0.1:9"));
        assert_eq!(wiring.endpoint(AwsService::DynamoDb), None);
        assert_eq!(wiring.role(), Role::Refresher);
    }
}
