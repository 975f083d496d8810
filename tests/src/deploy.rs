//! A deployment of `infra/template.yaml` on this machine: the template resolved for some
//! parameters and the resources made on the AWS emulator, each function's environment as
//! that resolved template gives it, and the functions built from exactly that environment
//! through the one wiring (`ms_oauth::wiring`). The integration tests, the local stack and
//! the measurement harnesses all deploy this way, so what they run is what a stack runs.

// Test support: a template this cannot read must fail loudly where it is used.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use connection_api::ConnectionApi;
use ms_oauth::config::{self, ConfigError, Role};
use ms_oauth::wiring::{Overrides, Wiring};
use oauth_redirect::RedirectService;
use oauth_start::StartService;
use token_refresher::Refresher;

use crate::aws;
use crate::iam::{Deployment, FunctionSetUp};
use crate::recorder::{ACCOUNT, REGION};

/// The template's four functions, by logical id.
pub const FUNCTIONS: [&str; 4] =
    ["StartFunction", "RedirectFunction", "ConnectionApiFunction", "TokenRefresherFunction"];

/// The role each function's code runs as.
pub fn role_of(function: &str) -> Role {
    match function {
        "StartFunction" => Role::Start,
        "RedirectFunction" => Role::Redirect,
        "ConnectionApiFunction" => Role::ConnectionApi,
        "TokenRefresherFunction" => Role::Refresher,
        other => panic!("the template has no function {other}"),
    }
}

/// `infra/template.yaml`, parsed.
pub fn template() -> serde_yaml_ng::Value {
    let path = aws::workspace_root().join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).expect("the template is YAML")
}

/// The resources a deployment's functions name, as made on the AWS emulator.
#[derive(Debug, Clone)]
pub struct Resources {
    pub table: String,
    pub shares_table: String,
    /// The token key's id.
    pub kms_key: String,
    /// The start-link key's secret (its ARN).
    pub start_link_key_arn: String,
    /// The audit bus (its name and ARN).
    pub audit_bus: String,
    pub audit_bus_arn: String,
}

impl Resources {
    /// Makes the tables, the token key, the start-link key and the audit bus of a deployment
    /// named `name` (idempotent: existing ones are used).
    pub async fn make(
        sdk: &aws_config::SdkConfig,
        name: &str,
        start_link_key: &str,
    ) -> Result<Self, String> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let table = name.to_owned();
        aws::ensure_table(&dynamodb, &table).await?;
        let shares_table = aws::shares_table_of(&table);
        aws::ensure_shares_table(&dynamodb, &shares_table).await?;
        let kms = aws_sdk_kms::Client::new(sdk);
        let kms_key = aws::ensure_kms_key(&kms, &format!("alias/{name}")).await?;
        let secrets = aws_sdk_secretsmanager::Client::new(sdk);
        let start_link_key_arn =
            aws::ensure_secret(&secrets, &format!("{name}/start-link-key"), start_link_key).await?;
        let audit_bus = format!("{name}-audit");
        let audit_bus_arn =
            aws::ensure_event_bus(&aws_sdk_eventbridge::Client::new(sdk), &audit_bus).await?;
        Ok(Self { table, shares_table, kms_key, start_link_key_arn, audit_bus, audit_bus_arn })
    }
}

/// The template deployed as stack `stack` with `parameters` (the rest at their defaults)
/// onto `resources`.
pub fn deployment(
    stack: &str,
    parameters: BTreeMap<String, String>,
    resources: &Resources,
) -> Deployment {
    let r = resources;
    let table_arn = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{}", r.table);
    let shares_arn = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{}", r.shares_table);
    let key_arn = format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{}", r.kms_key);
    let deployment = Deployment::new(
        template(),
        stack,
        parameters,
        BTreeMap::from([
            ("Table".to_owned(), r.table.clone()),
            ("KeySharesTable".to_owned(), r.shares_table.clone()),
            ("StartLinkKey".to_owned(), r.start_link_key_arn.clone()),
            ("TokenKey".to_owned(), r.kms_key.clone()),
            ("AuditBus".to_owned(), r.audit_bus.clone()),
        ]),
        BTreeMap::from([
            ("Table.Arn".to_owned(), table_arn),
            ("KeySharesTable.Arn".to_owned(), shares_arn),
            ("TokenKey.Arn".to_owned(), key_arn),
            ("AuditBus.Arn".to_owned(), r.audit_bus_arn.clone()),
        ]),
    );
    // CloudFormation refuses a stack whose parameters break a rule: so does every test.
    let broken = deployment.broken_rules();
    assert!(broken.is_empty(), "CloudFormation would refuse this deployment: {broken:?}");
    deployment
}

/// What function `id` gets from `deployment`, with its public address at `address` (on
/// this machine a loopback address, which no stack parameter can name).
pub fn function(deployment: &Deployment, id: &str, address: &str) -> FunctionSetUp {
    let mut set_up = deployment.function(id);
    set_up.environment.insert(config::WEBHOOK_ADDRESS.to_owned(), address.to_owned());
    set_up
}

/// The four functions of a deployment, each built through the one wiring from its own
/// environment and AWS SDK configuration.
#[derive(Debug)]
pub struct Built {
    pub start: StartService,
    pub redirect: RedirectService,
    pub api: ConnectionApi,
    pub refresher: Refresher,
}

impl Built {
    /// The functions served over HTTP, and the refresher.
    pub fn served(self) -> (crate::local::Functions, Refresher) {
        use std::sync::Arc;
        let functions = crate::local::Functions {
            start: Arc::new(self.start),
            redirect: Arc::new(self.redirect),
            api: Arc::new(self.api),
        };
        (functions, self.refresher)
    }
}

/// Each function's environment in `deployment`, its public address at `address`.
pub fn environments(
    deployment: &Deployment,
    address: &str,
) -> BTreeMap<&'static str, BTreeMap<String, String>> {
    FUNCTIONS.iter().map(|id| (*id, function(deployment, id, address).environment)).collect()
}

/// Builds every function of [`FUNCTIONS`] from `environment(id)` and `sdk(id)`, with
/// `overrides(id)` (tests' seams; none in the local stack).
pub fn build<'a>(
    environment: &dyn Fn(&str) -> &'a BTreeMap<String, String>,
    sdk: &dyn Fn(&str) -> &'a aws_config::SdkConfig,
    overrides: &dyn Fn(&str) -> Overrides,
) -> Result<Built, String> {
    let overrides: BTreeMap<&str, Overrides> =
        FUNCTIONS.iter().map(|id| (*id, overrides(id))).collect();
    let one = |id: &str| (environment(id), sdk(id), &overrides[id]);
    Ok(Built {
        start: wire(one("StartFunction"), "StartFunction", StartService::wire)?,
        redirect: wire(one("RedirectFunction"), "RedirectFunction", RedirectService::wire)?,
        api: wire(one("ConnectionApiFunction"), "ConnectionApiFunction", ConnectionApi::wire)?,
        refresher: wire(one("TokenRefresherFunction"), "TokenRefresherFunction", Refresher::wire)?,
    })
}

/// Builds one function `id` with `build` from its environment.
pub fn wire<T>(
    (environment, sdk, overrides): (&BTreeMap<String, String>, &aws_config::SdkConfig, &Overrides),
    id: &str,
    build: fn(&Wiring<'_>) -> Result<T, ConfigError>,
) -> Result<T, String> {
    let lookup = |k: &str| environment.get(k).cloned();
    let wiring = Wiring::new(role_of(id), &lookup, sdk).with_overrides(overrides.clone());
    build(&wiring).map_err(|e| format!("{id} cannot start from the template's environment: {e}"))
}
