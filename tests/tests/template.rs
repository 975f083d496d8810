//! Keeps `infra/template.yaml` and the code in step: every environment variable the template
//! sets is read by the function it is set on, the functions start from exactly what the
//! template gives them, and every route in the template reaches the handler that serves it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use ms_oauth::config::{self, ADMIN_CONSENT_PATH, REDIRECT_PATH, START_PATH, START_PATH_TEAMS};
use ms_oauth_tests::aws::workspace_root;
use ms_oauth_tests::local::{self, Functions};
use oauth_redirect::RedirectService;
use oauth_start::StartService;
use serde_yaml_ng::Value;

/// Variables read by the AWS SDK rather than by our configuration; only the copy of the
/// template that `sam local` runs (`infra/local_template.py`) declares them.
const SDK_VARIABLES: [&str; 1] = ["AWS_ENDPOINT_URL"];
/// Variables Lambda itself sets in every function (the code reads them to know it runs there).
const LAMBDA_VARIABLES: [&str; 1] = ["AWS_LAMBDA_FUNCTION_NAME"];
/// Secrets may reach deployed functions only through Secrets Manager.
const PLAIN_SECRET_VARIABLES: [&str; 2] = [config::MICROSOFT_CLIENT_SECRET, config::START_LINK_KEY];

fn template() -> Value {
    let path = workspace_root().join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).expect("template is YAML")
}

fn resources(template: &Value) -> &serde_yaml_ng::Mapping {
    template["Resources"].as_mapping().expect("Resources")
}

fn resources_of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(template)
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .map(|(k, r)| (k.as_str().unwrap().to_owned(), r))
        .collect()
}

/// Variables that switch a mode (inside AutoKitteh) rather than configure one: the template
/// sets them only when their parameter is given, and the checks run without them first.
const MODE_VARIABLES: [&str; 4] = [
    config::AUTOKITTEH_API_URL,
    config::AUTOKITTEH_UI_URL,
    config::AUTOKITTEH_API_TOKEN_ARN,
    config::AUTOKITTEH_DASHBOARD_URL,
];

/// A plausible value for each variable the code reads (the template's are intrinsics).
fn placeholder(var: &str) -> Option<&'static str> {
    Some(match var {
        config::WEBHOOK_ADDRESS => "api.example.com",
        config::MICROSOFT_CLIENT_ID => "11111111-2222-3333-4444-555555555555",
        config::MICROSOFT_TENANT_ID => "common",
        config::MICROSOFT_AUTHORITY_HOST => "https://login.microsoftonline.com",
        config::MICROSOFT_GRAPH_URL => "https://graph.microsoft.com",
        config::MICROSOFT_SCOPES => "User.Read",
        config::OAUTH_TABLE_NAME => "oauth",
        config::KEY_SHARES_TABLE_NAME => "oauth-key-shares",
        config::TOKEN_KMS_KEY_ID => {
            "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
        }
        config::EVENT_BUS_NAME => "default",
        config::TOKEN_REFRESH_MARGIN_SECONDS => "300",
        config::METRICS_NAMESPACE => "AutoKitteh/MicrosoftOAuth",
        config::AUDIT_BUS_NAME => "oauth-audit",
        config::MICROSOFT_CLIENT_AUTH => "secret",
        config::MICROSOFT_CLIENT_SECRET_ARN
        | config::START_LINK_KEY_ARN
        | config::AUTOKITTEH_API_TOKEN_ARN => {
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:oauth-AbCdEf"
        }
        config::AUTOKITTEH_API_URL => "https://api.autokitteh.example",
        config::AUTOKITTEH_UI_URL => "https://app.autokitteh.example",
        config::AUTOKITTEH_DASHBOARD_URL => "https://dash.autokitteh.example",
        "AWS_LAMBDA_FUNCTION_NAME" => "oauth-function",
        _ => return None,
    })
}

/// A lookup offering exactly `vars`, recording every name the code asks for.
struct Recorder {
    vars: BTreeSet<String>,
    asked: Mutex<BTreeSet<String>>,
    /// Values other than the placeholder, by name.
    overrides: BTreeMap<String, String>,
    /// Runs as a function on Lambda, which sets [`LAMBDA_VARIABLES`] itself.
    on_lambda: bool,
}

impl Recorder {
    fn new(vars: &BTreeSet<String>) -> Self {
        Self {
            vars: vars.clone(),
            asked: Mutex::default(),
            overrides: BTreeMap::new(),
            on_lambda: true,
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.asked.lock().unwrap().insert(name.to_owned());
        if self.on_lambda && LAMBDA_VARIABLES.contains(&name) {
            return placeholder(name).map(str::to_owned);
        }
        if !self.vars.contains(name) {
            return None;
        }
        self.overrides.get(name).cloned().or_else(|| placeholder(name).map(str::to_owned))
    }

    fn asked(&self) -> BTreeSet<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn sdk() -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .build()
}

/// Function logical id → (binary, environment variable names).
fn functions(template: &Value) -> BTreeMap<String, (String, BTreeSet<String>)> {
    resources_of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .map(|(id, f)| {
            let binary =
                f["Metadata"]["BuildProperties"]["Binary"].as_str().expect("Binary").to_owned();
            assert_eq!(f["Metadata"]["BuildMethod"].as_str(), Some("rust-cargolambda"), "{id}");
            // SAM adds the globals' variables to every function's own.
            let globals = &template["Globals"]["Function"]["Environment"]["Variables"];
            let vars = [globals, &f["Properties"]["Environment"]["Variables"]]
                .into_iter()
                .filter_map(Value::as_mapping)
                .flat_map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()))
                .collect();
            (id, (binary, vars))
        })
        .collect()
}

fn build(binary: &str, recorder: &Recorder) -> Result<(), String> {
    let lookup = |name: &str| recorder.lookup(name);
    match binary {
        "oauth-start" => {
            StartService::from_sdk(&lookup, &sdk()).map(drop).map_err(|e| e.to_string())
        }
        "oauth-redirect" => {
            RedirectService::from_sdk(&lookup, &sdk()).map(drop).map_err(|e| e.to_string())
        }
        "connection-api" => connection_api::ConnectionApi::from_sdk(&lookup, &sdk())
            .map(drop)
            .map_err(|e| e.to_string()),
        "token-refresher" => token_refresher::Refresher::from_sdk(&lookup, &sdk())
            .map(drop)
            .map_err(|e| e.to_string()),
        other => Err(format!("no function binary named {other}")),
    }
}

#[test]
fn every_function_is_a_workspace_binary_with_settings_for_lambda() {
    let template = template();
    let functions = functions(&template);
    assert_eq!(functions.len(), 4, "{functions:?}");
    for (binary, _) in functions.values() {
        assert!(
            workspace_root().join("functions").join(binary).join("Cargo.toml").exists(),
            "{binary}"
        );
    }
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(globals["Handler"].as_str(), Some("bootstrap"));
    // Graviton on Lambda unless a local run (sam local on x86_64) asks for its own.
    assert_eq!(tagged(&globals["Architectures"][0], "Ref").as_str(), Some("Architecture"));
    let architecture = &template["Parameters"]["Architecture"];
    assert_eq!(architecture["Default"].as_str(), Some("arm64"));
    assert_eq!(strings(&architecture["AllowedValues"]), ["arm64", "x86_64"]);
}

#[test]
fn the_template_sets_exactly_the_variables_each_function_reads() {
    for (id, (binary, vars)) in functions(&template()) {
        for secret in PLAIN_SECRET_VARIABLES {
            assert!(
                !vars.contains(secret),
                "{id} must read {secret} from Secrets Manager, not the environment"
            );
        }
        let ours: BTreeSet<String> = vars
            .iter()
            .filter(|v| {
                !SDK_VARIABLES.contains(&v.as_str()) && !MODE_VARIABLES.contains(&v.as_str())
            })
            .cloned()
            .collect();
        for var in &ours {
            assert!(placeholder(var).is_some(), "{id} sets {var}, which the code does not know");
        }
        // The function starts from the template's variables alone…
        let recorder = Recorder::new(&ours);
        build(&binary, &recorder)
            .unwrap_or_else(|e| panic!("{id} ({binary}) cannot start from the template: {e}"));
        // …and reads every one of them.
        let asked = recorder.asked();
        let stale: Vec<&String> = ours.difference(&asked).collect();
        assert!(stale.is_empty(), "{id} sets variables {binary} never reads: {stale:?}");
        // Taking any one away either breaks start-up or falls back to a documented default.
        for var in &ours {
            let mut fewer = ours.clone();
            fewer.remove(var);
            let optional = [
                config::MICROSOFT_TENANT_ID,
                config::MICROSOFT_AUTHORITY_HOST,
                config::MICROSOFT_GRAPH_URL,
                config::MICROSOFT_SCOPES,
                config::EVENT_BUS_NAME,
                config::TOKEN_REFRESH_MARGIN_SECONDS,
                config::METRICS_NAMESPACE,
                config::AUDIT_BUS_NAME,
                config::MICROSOFT_CLIENT_AUTH,
            ];
            if !optional.contains(&var.as_str()) {
                assert!(
                    build(&binary, &Recorder::new(&fewer)).is_err(),
                    "{id}: {var} looks unnecessary"
                );
            }
        }
    }
}

/// The plain-value twin of a secret's ARN variable: local runs may give the value itself,
/// a deployment never does (see [`PLAIN_SECRET_VARIABLES`]).
fn arn_twin(var: &str) -> Option<&'static str> {
    Some(match var {
        config::MICROSOFT_CLIENT_SECRET => config::MICROSOFT_CLIENT_SECRET_ARN,
        config::START_LINK_KEY => config::START_LINK_KEY_ARN,
        config::AUTOKITTEH_API_TOKEN => config::AUTOKITTEH_API_TOKEN_ARN,
        _ => return None,
    })
}

/// The environments a function is started from in these checks: standalone (no mode
/// variable), in every mode its template gives it, and with secretless client
/// authentication where it authenticates to Microsoft.
fn environments(vars: &BTreeSet<String>) -> Vec<(&'static str, Recorder)> {
    let ours: BTreeSet<String> =
        vars.iter().filter(|v| !SDK_VARIABLES.contains(&v.as_str())).cloned().collect();
    let standalone: BTreeSet<String> =
        ours.iter().filter(|v| !MODE_VARIABLES.contains(&v.as_str())).cloned().collect();
    let mut environments =
        vec![("standalone", Recorder::new(&standalone)), ("every mode", Recorder::new(&ours))];
    if ours.contains(config::MICROSOFT_CLIENT_AUTH) {
        let mut federated = standalone.clone();
        federated.remove(config::MICROSOFT_CLIENT_SECRET_ARN);
        let mut recorder = Recorder::new(&federated);
        recorder.overrides.insert(config::MICROSOFT_CLIENT_AUTH.into(), "aws_federation".into());
        environments.push(("aws_federation", recorder));
    }
    environments
}

#[test]
fn every_variable_a_function_reads_is_one_the_template_gives_it() {
    for (id, (binary, vars)) in functions(&template()) {
        for (mode, recorder) in environments(&vars) {
            build(&binary, &recorder).unwrap_or_else(|e| panic!("{id} ({mode}): {e}"));
            for asked in recorder.asked() {
                if vars.contains(&asked) || LAMBDA_VARIABLES.contains(&asked.as_str()) {
                    continue;
                }
                // A secret's value is read only where its ARN may stand instead.
                let twin = arn_twin(&asked);
                assert!(
                    twin.is_some_and(|arn| vars.contains(arn)),
                    "{id} ({mode}) reads {asked}, which the template does not give it: on a \
                     deployment it silently takes the built-in default"
                );
            }
        }
    }
}

#[test]
fn every_function_starts_inside_autokitteh_from_the_template_plus_its_parameters() {
    for (id, (binary, vars)) in functions(&template()) {
        let modes: BTreeSet<&str> =
            vars.iter().map(String::as_str).filter(|v| MODE_VARIABLES.contains(v)).collect();
        // The OAuth functions need AutoKitteh's API and UI; the connection API and the
        // refresher its API and the write-back token; each asks for what it was given.
        let (expected, asked_for): (BTreeSet<&str>, &str) = match binary.as_str() {
            "oauth-start" => (
                BTreeSet::from([config::AUTOKITTEH_API_URL, config::AUTOKITTEH_UI_URL]),
                config::AUTOKITTEH_UI_URL,
            ),
            "oauth-redirect" => (
                BTreeSet::from([
                    config::AUTOKITTEH_API_URL,
                    config::AUTOKITTEH_UI_URL,
                    config::AUTOKITTEH_DASHBOARD_URL,
                ]),
                config::AUTOKITTEH_DASHBOARD_URL,
            ),
            "connection-api" | "token-refresher" => (
                BTreeSet::from([config::AUTOKITTEH_API_URL, config::AUTOKITTEH_API_TOKEN_ARN]),
                config::AUTOKITTEH_API_TOKEN_ARN,
            ),
            other => panic!("{id}: unknown function {other}"),
        };
        assert_eq!(modes, expected, "{id}");
        let all: BTreeSet<String> =
            vars.iter().filter(|v| !SDK_VARIABLES.contains(&v.as_str())).cloned().collect();
        let recorder = Recorder::new(&all);
        build(&binary, &recorder).unwrap_or_else(|e| panic!("{id} inside AutoKitteh: {e}"));
        assert!(recorder.asked().contains(asked_for), "{id}");
        // A write-back token without the AutoKitteh it writes to is a configuration error.
        if asked_for == config::AUTOKITTEH_API_TOKEN_ARN {
            let mut orphan = all.clone();
            orphan.remove(config::AUTOKITTEH_API_URL);
            let error = build(&binary, &Recorder::new(&orphan)).err().unwrap_or_default();
            assert!(error.contains(config::AUTOKITTEH_API_TOKEN_ARN), "{id}: {error}");
        }
    }
}

#[tokio::test]
async fn every_route_in_the_template_reaches_its_handler() {
    let template = template();
    let functions = functions(&template);
    let integrations: BTreeMap<String, String> =
        resources_of_type(&template, "AWS::ApiGatewayV2::Integration")
            .into_iter()
            // The optional proxy to AutoKitteh runs no function of ours.
            .filter(|(_, i)| i["Properties"]["IntegrationType"].as_str() != Some("HTTP_PROXY"))
            .map(|(id, i)| {
                let uri = &i["Properties"]["IntegrationUri"];
                let target = match uri {
                    Value::Tagged(t) => {
                        t.value.as_str().expect("GetAtt target").trim_end_matches(".Arn").to_owned()
                    }
                    other => panic!("{id}: unexpected IntegrationUri {other:?}"),
                };
                assert_eq!(i["Properties"]["PayloadFormatVersion"].as_str(), Some("2.0"), "{id}");
                (id, target)
            })
            .collect();

    let routes = resources_of_type(&template, "AWS::ApiGatewayV2::Route");

    // Serve the real handlers the way `make run` does, configured from placeholders.
    // Standalone: the routes' bad-request pages are the same inside AutoKitteh.
    let all: BTreeSet<String> = functions
        .values()
        .flat_map(|(_, v)| v.iter().cloned())
        .filter(|v| !MODE_VARIABLES.contains(&v.as_str()))
        .collect();
    let recorder = Recorder::new(&all);
    let lookup = |name: &str| recorder.lookup(name);
    let served = Functions {
        start: Arc::new(StartService::from_sdk(&lookup, &sdk()).unwrap()),
        redirect: Arc::new(RedirectService::from_sdk(&lookup, &sdk()).unwrap()),
        api: Arc::new(connection_api::ConnectionApi::from_sdk(&lookup, &sdk()).unwrap()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(local::serve(listener, served));

    let mut served_keys = BTreeSet::new();
    let mut routed_functions = BTreeSet::new();
    for (id, route) in routes {
        let key = route["Properties"]["RouteKey"].as_str().expect("RouteKey");
        let (method, path) = key.split_once(' ').expect("METHOD /path");
        let target = match &route["Properties"]["Target"] {
            Value::Tagged(t) => t
                .value
                .as_str()
                .unwrap()
                .trim_start_matches("integrations/${")
                .trim_end_matches('}')
                .to_owned(),
            other => panic!("{id}: unexpected Target {other:?}"),
        };
        let Some(function) = integrations.get(&target) else {
            assert!(
                route["Condition"].as_str() == Some("ProxyToAutoKitteh"),
                "{id} targets no function and is not the optional proxy"
            );
            continue;
        };
        routed_functions.insert(function.clone());
        let (binary, _) = &functions[function];
        let auth = route["Properties"]["AuthorizationType"].as_str().unwrap_or("NONE");
        let (request_path, expected_words) = match binary.as_str() {
            "oauth-start" if config::AUTOKITTEH_TOKEN_URL_PATHS.contains(&path) => {
                // Every method of AutoKitteh's token-in-the-address finish is refused.
                assert_eq!(method, "ANY", "{id}");
                assert_eq!(route["Condition"].as_str(), Some("InAutoKitteh"), "{id}");
                (path.to_owned(), "This address is not used")
            }
            "oauth-start" => {
                // GET for the links, POST for the confirm button of the standalone page.
                assert!(
                    (method == "GET"
                        && [
                            START_PATH,
                            START_PATH_TEAMS,
                            config::START_PATH_TEAMS_WEB_UI,
                            ADMIN_CONSENT_PATH
                        ]
                        .contains(&path))
                        || (method == "POST" && path == START_PATH),
                    "{id}"
                );
                (path.to_owned(), "AutoKitteh")
            }
            "oauth-redirect" => {
                assert_eq!((method, path), ("GET", REDIRECT_PATH), "{id}");
                (path.to_owned(), "AutoKitteh")
            }
            "connection-api" => {
                assert!(path.starts_with("/connections/{cid}"), "{id}: {path}");
                (path.replace("{cid}", "not-a-connection-id"), "invalid_request")
            }
            other => panic!("{other} serves no route"),
        };
        // Browsers reach the OAuth paths; only the platform, signed, reaches the API.
        let expected_auth = if binary == "connection-api" { "AWS_IAM" } else { "NONE" };
        assert_eq!(auth, expected_auth, "{id}");

        // The handler answers (a page or JSON about the bad request), not the local 404.
        let refused = config::AUTOKITTEH_TOKEN_URL_PATHS.contains(&path);
        let method = if method == "ANY" { "GET" } else { method };
        let response = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("http://{address}{request_path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), if refused { 410 } else { 400 }, "{key}");
        let body = response.text().await.unwrap();
        assert!(body.contains(expected_words), "{key}: {body}");
        served_keys.insert(key.to_owned());
    }
    assert_eq!(
        served_keys,
        BTreeSet::from(
            [
                "GET /oauth/start/microsoft",
                "POST /oauth/start/microsoft",
                "GET /oauth/start/microsoft_teams",
                "GET /oauth/start/microsoft_microsoft_teams",
                "ANY /microsoft/oauth",
                "ANY /microsoft_teams/oauth",
                "GET /oauth/redirect/microsoft",
                "GET /connections/{cid}",
                "GET /connections/{cid}/token",
                "DELETE /connections/{cid}",
                "GET /connections/{cid}/app",
                "PUT /connections/{cid}/app",
                "DELETE /connections/{cid}/app",
                "GET /oauth/adminconsent/microsoft",
            ]
            .map(str::to_owned)
        )
    );
    // Every function but the scheduled refresher has a route; the refresher has a schedule.
    for (id, (binary, _)) in &functions {
        if binary == "token-refresher" {
            let events = &resources(&template)[id.as_str()]["Properties"]["Events"];
            let schedules =
                events.as_mapping().unwrap().values().filter(|e| e["Type"] == "Schedule").count();
            assert_eq!(schedules, 1, "{id} runs on one schedule");
        } else {
            assert!(routed_functions.contains(id), "{id} has no route");
        }
    }
}

#[test]
fn the_key_policies_name_the_store_the_code_seals_with() {
    let text = std::fs::read_to_string(workspace_root().join("infra/template.yaml")).unwrap();
    let named: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kms:EncryptionContext:store: "))
        .collect();
    // The token key's statements for new seals (the redirect's, the API's and refresher's),
    // for app credentials (the API seals, sign-ins and refreshes open) and the operators'.
    assert_eq!(named.len(), 5, "{named:?}");
    assert!(named.iter().all(|n| *n == ms_oauth::crypto::TOKEN_STORE), "{named:?}");
    let purposes: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kms:EncryptionContext:purpose: "))
        .collect();
    assert_eq!(purposes, [ms_oauth::apps::CREDENTIAL_PURPOSE; 2], "the app credential statements");
}

#[test]
fn the_platform_api_and_the_sign_in_routes_are_throttled_apart() {
    let template = template();
    let stage = &resources(&template)["HttpApiStage"]["Properties"];
    let refs = |v: &Value| match v {
        Value::Tagged(t) => t.value.as_str().unwrap_or_default().to_owned(),
        other => panic!("not a parameter reference: {other:?}"),
    };
    let default = &stage["DefaultRouteSettings"];
    assert_eq!(refs(&default["ThrottlingRateLimit"]), "SignInRateLimit");
    assert_eq!(refs(&default["ThrottlingBurstLimit"]), "SignInBurstLimit");
    // !If [ServeConnectionApi, {route key: settings}, NoValue]
    let Value::Tagged(route_settings) = &stage["RouteSettings"] else { panic!("RouteSettings") };
    let branches = route_settings.value.as_sequence().expect("If");
    assert_eq!(branches[0].as_str(), Some("ServeConnectionApi"));
    let per_route = branches[1].as_mapping().expect("route settings");
    let api_routes: BTreeSet<String> = resources_of_type(&template, "AWS::ApiGatewayV2::Route")
        .into_iter()
        .filter_map(|(_, r)| r["Properties"]["RouteKey"].as_str().map(str::to_owned))
        .filter(|k| k.contains("/connections/"))
        .collect();
    let configured: BTreeSet<String> =
        per_route.keys().map(|k| k.as_str().unwrap().to_owned()).collect();
    assert_eq!(configured, api_routes, "every connection API route, and only those");
    for settings in per_route.values() {
        assert_eq!(refs(&settings["ThrottlingRateLimit"]), "ConnectionApiRateLimit");
        assert_eq!(refs(&settings["ThrottlingBurstLimit"]), "ConnectionApiBurstLimit");
    }
    // In front of AutoKitteh its proxied routes have limits of their own, not the sign-in's.
    let proxied = branches[2].as_mapping().expect("route settings in front of AutoKitteh");
    let proxy_routes: BTreeSet<String> = resources_of_type(&template, "AWS::ApiGatewayV2::Route")
        .into_iter()
        .filter(|(_, r)| r["Condition"].as_str() == Some("ProxyToAutoKitteh"))
        .filter_map(|(_, r)| r["Properties"]["RouteKey"].as_str().map(str::to_owned))
        .collect();
    let configured: BTreeSet<String> =
        proxied.keys().map(|k| k.as_str().unwrap().to_owned()).collect();
    assert_eq!(configured, proxy_routes, "every proxied route, and only those");
    for settings in proxied.values() {
        assert_eq!(refs(&settings["ThrottlingRateLimit"]), "AutoKittehRateLimit");
        assert_eq!(refs(&settings["ThrottlingBurstLimit"]), "AutoKittehBurstLimit");
    }
    let parameters = &template["Parameters"];
    let sign_in = parameters["SignInRateLimit"]["Default"].as_u64().unwrap();
    let autokitteh = parameters["AutoKittehRateLimit"]["Default"].as_u64().unwrap();
    assert!(autokitteh >= 100 * sign_in, "AutoKitteh's traffic is not capped like sign-ins");
    // The sign-in functions can reserve (and be held to) their own concurrency.
    for id in ["StartFunction", "RedirectFunction"] {
        let reserved = &resources(&template)[id]["Properties"]["ReservedConcurrentExecutions"];
        assert!(matches!(reserved, Value::Tagged(_)), "{id}: {reserved:?}");
    }
}

#[test]
fn the_production_template_has_nothing_local_in_it() {
    let text = std::fs::read_to_string(workspace_root().join("infra/template.yaml")).unwrap();
    for local in SDK_VARIABLES.iter().chain(&["LocalAwsEndpointUrl", "127.0.0.1", "localhost"]) {
        assert!(!text.contains(local), "infra/template.yaml mentions {local}");
    }
}

/// The strings of a YAML list.
fn strings(list: &Value) -> Vec<&str> {
    list.as_sequence().expect("a list").iter().filter_map(Value::as_str).collect()
}

/// The value of `!Name value` (a tag), or panics.
fn tagged<'a>(v: &'a Value, name: &str) -> &'a Value {
    match v {
        Value::Tagged(t) if t.tag == name => &t.value,
        other => panic!("expected !{name}, found {other:?}"),
    }
}

#[test]
fn the_per_client_limit_in_front_passes_requests_whole_and_counts_only_sign_ins() {
    let template = template();
    let distribution = &resources(&template)["EdgeDistribution"];
    assert_eq!(distribution["Condition"].as_str(), Some("UseEdge"));
    let config = &distribution["Properties"]["DistributionConfig"];
    let behavior = &config["DefaultCacheBehavior"];
    // CachingDisabled and AllViewer: nothing cached; Host, cookies, query, SigV4 headers pass.
    assert_eq!(behavior["CachePolicyId"].as_str(), Some("4135ea2d-6df8-44a3-9df3-4b5a84be39ad"));
    assert_eq!(
        behavior["OriginRequestPolicyId"].as_str(),
        Some("216adef6-5c7f-47e4-b989-5492eafa07d3")
    );
    assert_eq!(behavior["ViewerProtocolPolicy"].as_str(), Some("https-only"));
    let methods = strings(&behavior["AllowedMethods"]);
    for route in resources_of_type(&template, "AWS::ApiGatewayV2::Route") {
        let key = route.1["Properties"]["RouteKey"].as_str().unwrap();
        let method = key.split(' ').next().unwrap();
        assert!(method == "ANY" || methods.contains(&method), "CloudFront refuses {key}");
    }
    let origin = &config["Origins"][0];
    assert_eq!(
        tagged(&origin["DomainName"], "GetAtt").as_str(),
        Some("DomainName.RegionalDomainName")
    );
    assert_eq!(origin["CustomOriginConfig"]["OriginProtocolPolicy"].as_str(), Some("https-only"));

    let acl = &resources(&template)["EdgeWebAcl"]["Properties"];
    assert_eq!(acl["Scope"].as_str(), Some("CLOUDFRONT"));
    let rule = &acl["Rules"][0];
    assert_eq!(rule["Action"]["Block"]["CustomResponse"]["ResponseCode"].as_u64(), Some(429));
    let rate = &rule["Statement"]["RateBasedStatement"];
    assert_eq!(rate["AggregateKeyType"].as_str(), Some("IP"));
    assert_eq!(tagged(&rate["Limit"], "Ref").as_str(), Some("EdgeRateLimit"));
    let scope = &rate["ScopeDownStatement"]["ByteMatchStatement"];
    assert_eq!(scope["SearchString"].as_str(), Some("/oauth/"));
    assert_eq!(scope["PositionalConstraint"].as_str(), Some("STARTS_WITH"));
    // A partial set-up is refused before anything is created.
    let rule = &template["Rules"]["EdgeNeedsDomainAndCertificate"];
    assert_eq!(rule["Assertions"].as_sequence().unwrap().len(), 3);
}

/// The dashboard's body with every `${…}` of its `!Sub` replaced: the map's names by
/// `sample` values, the template's resources and pseudo parameters by a placeholder. Panics
/// on a name that is none of these.
fn dashboard_body(template: &Value) -> serde_json::Value {
    let sub = tagged(&resources(template)["Dashboard"]["Properties"]["DashboardBody"], "Sub");
    let text = sub[0].as_str().expect("the body is a string");
    let map = sub[1].as_mapping().expect("the variables of !Sub");
    let sample = |name: &str| match name {
        "Namespace" => "AutoKitteh/MicrosoftOAuth".to_owned(),
        "WarningDays" => "30".to_owned(),
        _ => panic!("the dashboard's !Sub names {name}, which the test does not know"),
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("a closed ${…}") + at;
        let name = &rest[at + 2..end];
        let logical = name.split('.').next().unwrap();
        let value = if map.contains_key(name) {
            sample(name)
        } else if name == "AWS::Region" {
            "us-east-1".to_owned()
        } else {
            assert!(resources(template).contains_key(logical), "the dashboard names {name}");
            format!("<{name}>")
        };
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("the dashboard is not JSON: {e}"))
}

/// `(metric name, dimensions)` of each metric of ours a dashboard widget or SEARCH reads.
fn our_metrics(widget: &serde_json::Value) -> Vec<(String, Vec<(String, String)>)> {
    let mut found = Vec::new();
    for spec in widget["properties"]["metrics"].as_array().into_iter().flatten() {
        let spec = spec.as_array().expect("a metric is a list");
        if let Some(expression) = spec[0]["expression"].as_str() {
            // SEARCH('{Namespace,Dims…} MetricName="X"', …)
            if let Some(at) = expression.find("MetricName=\"") {
                let name = &expression[at + 12..];
                let name = &name[..name.find('"').unwrap()];
                assert!(expression.contains("{AutoKitteh/MicrosoftOAuth,"), "{expression}");
                found.push((name.to_owned(), Vec::new()));
            }
            continue;
        }
        let words: Vec<&str> = spec.iter().filter_map(serde_json::Value::as_str).collect();
        if words[0] != "AutoKitteh/MicrosoftOAuth" {
            assert!(words[0].starts_with("AWS/"), "unknown namespace {}", words[0]);
            continue;
        }
        let dims = words[2..].chunks(2).map(|d| (d[0].to_owned(), d[1].to_owned())).collect();
        found.push((words[1].to_owned(), dims));
    }
    found
}

fn assert_known_metric(name: &str, dims: &[(String, String)], whose: &str) {
    use ms_oauth::metrics::{dimension_values, name::ALL};
    assert!(ALL.contains(&name), "{whose} reads {name}, which the functions never record");
    for (key, value) in dims {
        let values = dimension_values(key).unwrap_or_else(|| panic!("{whose}: no dimension {key}"));
        assert!(
            values.contains(&value.as_str()),
            "{whose}: {name} {key}={value} is never recorded"
        );
    }
}

#[test]
fn the_dashboard_reads_every_metric_the_functions_record_and_nothing_else() {
    let template = template();
    let body = dashboard_body(&template);
    let widgets = body["widgets"].as_array().expect("widgets");
    let mut seen = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for widget in widgets {
        let title = widget["properties"]["title"].as_str().expect("every widget has a title");
        for (name, dims) in our_metrics(widget) {
            assert_known_metric(&name, &dims, title);
            seen.insert(name);
        }
        // On CloudWatch's 24-column grid, and no two widgets on the same cell.
        let [x, y, w, h] = ["x", "y", "width", "height"].map(|k| widget[k].as_u64().unwrap());
        assert!(x + w <= 24, "{title} is wider than the dashboard");
        for cell in (x..x + w).flat_map(|c| (y..y + h).map(move |r| (c, r))) {
            assert!(cells.insert(cell), "{title} overlaps another widget at {cell:?}");
        }
    }
    for name in ms_oauth::metrics::name::ALL {
        assert!(seen.contains(*name), "the dashboard shows nothing of {name}");
    }
    // The alarm widget lists every alarm of the template.
    let listed: BTreeSet<String> = widgets
        .iter()
        .filter(|w| w["type"] == "alarm")
        .flat_map(|w| w["properties"]["alarms"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap().trim_matches(['<', '>']).trim_end_matches(".Arn").to_owned())
        .collect();
    let alarms: BTreeSet<String> = resources_of_type(&template, "AWS::CloudWatch::Alarm")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, alarms);
}

#[test]
fn the_alarms_on_our_metrics_read_what_the_functions_record() {
    let template = template();
    let ours = |namespace: &Value| match namespace {
        Value::Tagged(t) => t.tag == "Ref" && t.value.as_str() == Some("MetricsNamespace"),
        _ => false,
    };
    let dims = |metric: &Value| -> Vec<(String, String)> {
        metric["Dimensions"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|d| {
                (d["Name"].as_str().unwrap().to_owned(), d["Value"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let mut checked = 0;
    for (id, alarm) in resources_of_type(&template, "AWS::CloudWatch::Alarm") {
        let p = &alarm["Properties"];
        if ours(&p["Namespace"]) {
            assert_known_metric(p["MetricName"].as_str().unwrap(), &dims(p), &id);
            checked += 1;
        }
        for stat in p["Metrics"].as_sequence().into_iter().flatten() {
            let metric = &stat["MetricStat"]["Metric"];
            if ours(&metric["Namespace"]) {
                assert_known_metric(metric["MetricName"].as_str().unwrap(), &dims(metric), &id);
                checked += 1;
            }
        }
        // Every alarm notifies the operator's topic when one is given.
        assert!(p["AlarmActions"] != Value::Null, "{id} notifies no one");
    }
    assert!(checked >= 9, "only {checked} alarm metrics of ours");
}

#[test]
fn with_aws_federation_the_functions_start_without_a_secret_and_may_ask_sts_only_for_entra() {
    use ms_oauth_tests::iam::Deployment;
    let template = template();
    let deploy = |auth: &str| {
        let parameters = BTreeMap::from([
            ("MicrosoftClientId".to_owned(), "11111111-2222-3333-4444-555555555555".to_owned()),
            ("MicrosoftClientAuth".to_owned(), auth.to_owned()),
        ]);
        Deployment::new(template.clone(), "oauth", parameters, BTreeMap::new(), BTreeMap::new())
    };
    let federated = deploy("aws_federation");
    let with_secret = deploy("secret");
    assert!(!federated.condition("MakeClientSecret"), "no secret is made");
    assert!(with_secret.condition("MakeClientSecret"));
    for (id, binary) in [
        ("RedirectFunction", "oauth-redirect"),
        ("ConnectionApiFunction", "connection-api"),
        ("TokenRefresherFunction", "token-refresher"),
    ] {
        let set_up = federated.function(id);
        let env = &set_up.environment;
        assert_eq!(
            env.get(config::MICROSOFT_CLIENT_AUTH).map(String::as_str),
            Some("aws_federation")
        );
        assert!(!env.contains_key(config::MICROSOFT_CLIENT_SECRET_ARN), "{id} gets a secret");
        // It starts from that environment (no secret needed).
        let vars: BTreeSet<String> = env.keys().cloned().collect();
        let mut recorder = Recorder::new(&vars);
        recorder
            .overrides
            .insert(config::MICROSOFT_CLIENT_AUTH.to_owned(), "aws_federation".to_owned());
        build(binary, &recorder).unwrap_or_else(|e| panic!("{id}: {e}"));

        let statements = federated.role_statements(&set_up.role);
        let sts: Vec<_> = statements
            .iter()
            .filter(|s| s.actions.iter().any(|a| a == "sts:GetWebIdentityToken"))
            .collect();
        assert_eq!(sts.len(), 1, "{id}");
        let keys: BTreeSet<String> = sts[0].conditions.iter().map(|c| c.key.clone()).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "sts:IdentityTokenAudience".to_owned(),
                "sts:SigningAlgorithm".to_owned(),
                "sts:DurationSeconds".to_owned()
            ]),
            "{id}"
        );
        assert!(
            !statements.iter().any(|s| s
                .actions
                .iter()
                .any(|a| a.starts_with("secretsmanager:Get")
                    && s.resources.iter().any(|r| r.contains("ClientSecret")))),
            "{id} may still read a client secret"
        );
        // With a secret, no STS grant.
        let secret_statements = with_secret.role_statements(&with_secret.function(id).role);
        assert!(!secret_statements.iter().any(|s| s.actions.iter().any(|a| a.starts_with("sts:"))));
    }
}

/// The deployments the operator checks run over: standalone with a secret, secretless, and
/// inside AutoKitteh with write-back; each with an operator role.
fn operator_deployments() -> Vec<(&'static str, BTreeMap<String, String>)> {
    let base = |extra: &[(&str, &str)]| {
        let mut parameters = BTreeMap::from([
            ("MicrosoftClientId".to_owned(), "11111111-2222-3333-4444-555555555555".to_owned()),
            ("OperatorRoleArns".to_owned(), "arn:aws:iam::123456789012:role/oncall".to_owned()),
        ]);
        for (k, v) in extra {
            parameters.insert((*k).to_owned(), (*v).to_owned());
        }
        parameters
    };
    vec![
        ("standalone", base(&[])),
        ("aws_federation", base(&[("MicrosoftClientAuth", "aws_federation")])),
        (
            "inside AutoKitteh with write-back",
            base(&[
                ("AutoKittehApiUrl", "https://api.autokitteh.example"),
                (
                    "AutoKittehApiTokenArn",
                    "arn:aws:secretsmanager:us-east-1:123456789012:secret:ak-AbCdEf",
                ),
            ]),
        ),
    ]
}

fn test_resources() -> ms_oauth_tests::deploy::Resources {
    ms_oauth_tests::deploy::Resources {
        table: "oauth".into(),
        shares_table: "oauth-key-shares".into(),
        kms_key: "00000000-0000-0000-0000-000000000000".into(),
        start_link_key_arn: "arn:aws:secretsmanager:us-east-1:123456789012:secret:sl-AbCdEf".into(),
        audit_bus: "oauth-audit".into(),
        audit_bus_arn: "arn:aws:events:us-east-1:123456789012:event-bus/oauth-audit".into(),
    }
}

#[test]
fn the_operator_environment_output_gives_akoauth_exactly_what_it_reads() {
    for (mode, parameters) in operator_deployments() {
        let deployment = ms_oauth_tests::deploy::deployment("stack", parameters, &test_resources());
        let text = deployment.output("OperatorEnvironment").expect("always an output");
        let given: BTreeMap<String, String> = text
            .split(' ')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{mode}: {pair}"));
                assert!(!v.is_empty(), "{mode}: {k} is empty");
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let names: BTreeSet<String> = given.keys().cloned().collect();
        let mut recorder = Recorder::new(&names);
        recorder.overrides = given.clone();
        recorder.on_lambda = false;
        let lookup = |name: &str| recorder.lookup(name);
        // Every command that reaches AWS builds the token service; start-link and
        // consent-link also read the start-link key (standalone).
        ms_oauth::tokens::TokenService::from_sdk(config::Role::Operator, &lookup, &sdk())
            .unwrap_or_else(|e| panic!("{mode}: akoauth cannot start from the output: {e}"));
        let link_key =
            config::secret_source(&lookup, config::START_LINK_KEY, config::START_LINK_KEY_ARN);
        assert_eq!(link_key.is_ok(), !mode.starts_with("inside"), "{mode}");
        let asked = recorder.asked();
        // Read to tell whether a mode is on (or a secret given twice): their absence says so.
        let switches: BTreeSet<&str> = MODE_VARIABLES
            .into_iter()
            .chain(PLAIN_SECRET_VARIABLES)
            .chain([
                config::AUTOKITTEH_API_TOKEN,
                config::MICROSOFT_CLIENT_SECRET_ARN,
                config::START_LINK_KEY_ARN,
            ])
            .chain(LAMBDA_VARIABLES)
            .collect();
        for var in &asked {
            assert!(
                names.contains(var) || switches.contains(var.as_str()),
                "{mode}: akoauth reads {var}, which OperatorEnvironment does not give"
            );
        }
        let unread: Vec<&String> = names.difference(&asked).collect();
        assert!(
            unread.is_empty(),
            "{mode}: OperatorEnvironment gives what akoauth never reads: {unread:?}"
        );
    }
}

#[test]
fn only_the_operator_roles_named_may_open_tokens_and_only_with_them_is_there_a_policy() {
    let (_, mut parameters) = operator_deployments().remove(0);
    let with = ms_oauth_tests::deploy::deployment("stack", parameters.clone(), &test_resources());
    parameters.remove("OperatorRoleArns");
    let without = ms_oauth_tests::deploy::deployment("stack", parameters, &test_resources());
    let named = |d: &ms_oauth_tests::iam::Deployment| -> usize {
        d.key_policies()
            .values()
            .flatten()
            .filter(|s| s.names("arn:aws:iam::123456789012:role/oncall"))
            .count()
    };
    assert_eq!(named(&with), 3, "open and seal, the earlier seals, describe");
    assert_eq!(named(&without), 0);
    assert!(!with.policy_statements("OperatorPolicy").is_empty());
    assert!(without.policy_statements("OperatorPolicy").is_empty());
    assert!(with.output("OperatorPolicyArn").is_some());
    assert!(without.output("OperatorPolicyArn").is_none());
}

/// A deployment the product cannot serve is refused by CloudFormation before anything is
/// made: inside AutoKitteh with `aws_federation`, AutoKitteh's own refreshes need a client
/// secret the app no longer has, so write-back is required.
#[test]
fn federation_inside_autokitteh_without_write_back_is_refused_at_deploy_time() {
    let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        let mut all = BTreeMap::from([
            ("MicrosoftClientId".to_owned(), "11111111-2222-3333-4444-555555555555".to_owned()),
            ("MicrosoftTenantId".to_owned(), "organizations".to_owned()),
        ]);
        all.extend(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        all
    };
    let broken = |pairs: &[(&str, &str)]| {
        ms_oauth_tests::iam::Deployment::new(
            template(),
            "stack",
            params(pairs),
            BTreeMap::new(),
            BTreeMap::new(),
        )
        .broken_rules()
    };
    let federated = ("MicrosoftClientAuth", "aws_federation");
    let inside = ("AutoKittehApiUrl", "https://api.example.com");
    let token = ("AutoKittehApiTokenArn", "arn:aws:secretsmanager:us-east-1:000000000000:secret:t");
    let refused = broken(&[federated, inside]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("needs AutoKittehApiTokenArn"), "{refused:?}");
    assert!(broken(&[federated, inside, token]).is_empty());
    assert!(broken(&[federated]).is_empty(), "standalone federation needs no write-back");
    assert!(broken(&[inside]).is_empty(), "with a secret AutoKitteh refreshes itself");
}
