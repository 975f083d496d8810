//! `make run`: the whole product on this machine with no AWS account and no Azure app.
//!
//! Brings up (unless pointed elsewhere) moto for DynamoDB/Secrets Manager/KMS and the
//! stand-in identity platform, creates the table, key and secrets idempotently, builds the
//! functions from the environments the template gives them, serves the start, redirect and
//! connection API functions on their API paths and prints a signed start link.
//!
//! Inside AutoKitteh: with `LOCAL_AUTOKITTEH=1` it also starts a stand-in AutoKitteh and a
//! front door on the public address (the three OAuth paths to the functions, the rest to the
//! stand-in); with `AUTOKITTEH_API_URL` set it uses that AutoKitteh, starts neither, and
//! serves the functions on `LOCAL_PORT` for the user's own front door.
//!
//! For `make sam-local`: `LOCAL_SERVICES_ONLY=1` starts only what the functions depend on
//! (moto, the stand-in, the resources) and prints the start link, for the functions SAM runs;
//! `LOCAL_BIND_ADDRESS` makes moto and the stand-in listen there (Docker's bridge address,
//! which SAM's containers reach) instead of 127.0.0.1.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

use ms_oauth::autokitteh::Integration;
use ms_oauth::config::{self, PublicAddress};
use ms_oauth::domain::Origin;
use ms_oauth::grant::MAX_GRANT_LIFETIME_SECS;
use ms_oauth::wiring::Overrides;
use ms_oauth_tests::autokitteh::AkStandin;
use ms_oauth_tests::local;
use ms_oauth_tests::standin::{AppRegistration, OTHER_TENANT, Registration, Standin};
use ms_oauth_tests::{aws, deploy};

/// Apps the local stand-in registers for connections' own apps (the API document's example).
const DEMO_DAEMON_APP: &str = "0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3";
const DEMO_PRIVATE_APP: &str = "1c8d9e0f-2a31-4b4c-9d5e-6f708192a3b4";
const DEMO_APP_SECRET: &str = "example-secret-value";
use tokio::net::TcpListener;

const DEFAULT_WEBHOOK_ADDRESS: &str = "http://localhost:9000";
const LOCAL_CLIENT_ID: &str = "00000000-0000-0000-0000-0000000a11ce";
const LOCAL_TABLE: &str = "autokitteh-oauth-local";
const LOCAL_KMS_ALIAS: &str = "alias/autokitteh-oauth-local";
const LOCAL_CLIENT_SECRET_NAME: &str = "autokitteh-oauth-local/microsoft-client-secret";
const LOCAL_START_KEY_NAME: &str = "autokitteh-oauth-local/start-link-key";
const LOCAL_AK_TOKEN_NAME: &str = "autokitteh-oauth-local/autokitteh-api-token";
/// The stack name the local deployment of the template goes by.
const LOCAL_STACK: &str = "autokitteh-oauth-local";
/// Used only when `START_LINK_KEY` is unset, so local start links are reproducible.
const LOCAL_START_LINK_KEY: &str = "local-development-start-link-key-do-not-use-in-production";
const LOCAL_CLIENT_SECRET: &str = "local-stand-in-client-secret~not-a-real-one";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-stack: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn port_var(name: &str, default: u16) -> Result<u16, String> {
    env(name)
        .map_or(Ok(default), |v| v.parse().map_err(|_| format!("{name} must be a port number")))
}

async fn run() -> Result<(), String> {
    // The functions' own logging: RUST_LOG (a level) for our crates, libraries capped.
    let level = ms_oauth::runtime::log_level(&|k: &str| std::env::var(k).ok());
    let _ = ms_oauth::runtime::try_init_tracing(level, false, std::io::stdout);

    let mut vars: HashMap<&'static str, String> = HashMap::new();
    let webhook = env(config::WEBHOOK_ADDRESS).unwrap_or_else(|| DEFAULT_WEBHOOK_ADDRESS.into());
    let public =
        PublicAddress::parse(&webhook).map_err(|p| format!("{} {p}", config::WEBHOOK_ADDRESS))?;
    let public_port = url::Url::parse(&public.origin())
        .ok()
        .and_then(|u| u.port_or_known_default())
        .unwrap_or(9000);
    // Inside AutoKitteh the public address belongs to a front door (ours or the user's), so
    // the functions listen elsewhere.
    let external_autokitteh = env(config::AUTOKITTEH_API_URL);
    let local_autokitteh = external_autokitteh.is_none()
        && env("LOCAL_AUTOKITTEH").is_some_and(|v| v != "0" && v != "false");
    let listen_port = match env("LOCAL_PORT") {
        Some(_) => port_var("LOCAL_PORT", 9001)?,
        None if external_autokitteh.is_some() || local_autokitteh => 9001,
        None => public_port,
    };
    vars.insert(config::WEBHOOK_ADDRESS, webhook);

    let bind = env("LOCAL_BIND_ADDRESS").unwrap_or_else(|| "127.0.0.1".into());
    bind.parse::<std::net::IpAddr>()
        .map_err(|_| format!("LOCAL_BIND_ADDRESS must be an IP address, not {bind:?}"))?;
    let services_only = env("LOCAL_SERVICES_ONLY").is_some_and(|v| v != "0" && v != "false");

    // AWS: an endpoint given by the user, or moto started here.
    let endpoint = match env("AWS_ENDPOINT_URL") {
        Some(url) => {
            println!("AWS emulator:       {url} (from AWS_ENDPOINT_URL)");
            url
        }
        None => {
            let port = port_var("MOTO_PORT", 4566)?;
            let url = aws::spawn_moto_on(&bind, port).map_err(|e| e.to_string())?;
            println!("AWS emulator:       {url} (moto, started here)");
            url
        }
    };
    let sdk = if env("AWS_ACCESS_KEY_ID").is_some() {
        let mut loader = ms_oauth::runtime::aws_config_loader().endpoint_url(&endpoint);
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            loader = loader.region(aws_config::Region::new(aws::LOCAL_REGION));
        }
        loader.load().await
    } else {
        aws::sdk_config(&endpoint).await
    };

    let table = env(config::OAUTH_TABLE_NAME).unwrap_or_else(|| LOCAL_TABLE.into());
    aws::ensure_table(&aws_sdk_dynamodb::Client::new(&sdk), &table).await?;
    vars.insert(config::OAUTH_TABLE_NAME, table.clone());
    let shares_table =
        env(config::KEY_SHARES_TABLE_NAME).unwrap_or_else(|| aws::shares_table_of(&table));
    aws::ensure_shares_table(&aws_sdk_dynamodb::Client::new(&sdk), &shares_table).await?;
    vars.insert(config::KEY_SHARES_TABLE_NAME, shares_table);
    let kms_key = match env(config::TOKEN_KMS_KEY_ID) {
        Some(k) => k,
        None => aws::ensure_kms_key(&aws_sdk_kms::Client::new(&sdk), LOCAL_KMS_ALIAS).await?,
    };
    vars.insert(config::TOKEN_KMS_KEY_ID, kms_key.clone());

    // Microsoft: a real authority when given, otherwise the stand-in.
    let client_id = env(config::MICROSOFT_CLIENT_ID).unwrap_or_else(|| LOCAL_CLIENT_ID.into());
    vars.insert(config::MICROSOFT_CLIENT_ID, client_id.clone());
    let client_secret =
        env(config::MICROSOFT_CLIENT_SECRET).unwrap_or_else(|| LOCAL_CLIENT_SECRET.into());
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    match env(config::MICROSOFT_CLIENT_SECRET_ARN) {
        Some(arn) => {
            vars.insert(config::MICROSOFT_CLIENT_SECRET_ARN, arn);
        }
        None => {
            // Keep the secret where production keeps it, so the Secrets Manager path runs too.
            let arn =
                aws::ensure_secret(&secrets, LOCAL_CLIENT_SECRET_NAME, &client_secret).await?;
            vars.insert(config::MICROSOFT_CLIENT_SECRET_ARN, arn);
        }
    }
    if let Some(tenant) = env(config::MICROSOFT_TENANT_ID) {
        vars.insert(config::MICROSOFT_TENANT_ID, tenant);
    }
    for var in [
        config::MICROSOFT_SCOPES,
        config::TOKEN_REFRESH_MARGIN_SECONDS,
        config::EVENT_BUS_NAME,
        config::AUTOKITTEH_DASHBOARD_URL,
    ] {
        if let Some(value) = env(var) {
            vars.insert(var, value);
        }
    }
    match env(config::MICROSOFT_AUTHORITY_HOST) {
        Some(authority) => {
            println!("Identity platform:  {authority} (from {})", config::MICROSOFT_AUTHORITY_HOST);
            vars.insert(config::MICROSOFT_AUTHORITY_HOST, authority);
            if let Some(graph) = env(config::MICROSOFT_GRAPH_URL) {
                vars.insert(config::MICROSOFT_GRAPH_URL, graph);
            }
        }
        None => {
            let port = port_var("STANDIN_PORT", 9100)?;
            let listener = TcpListener::bind((bind.as_str(), port)).await.map_err(|e| {
                format!("cannot listen on {bind}:{port} for the stand-in ({e}); set STANDIN_PORT")
            })?;
            let standin = Standin::spawn(
                listener,
                Registration {
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    redirect_uri: public.redirect_uri().to_string(),
                },
            )
            .map_err(|e| e.to_string())?;
            println!("Identity platform:  {} (local stand-in, NOT Microsoft)", standin.url());
            // Two apps of its own a connection can be given (PUT /connections/{cid}/app), with
            // the values the API document's example uses.
            for (client_id, kind) in
                [(DEMO_DAEMON_APP, "daemonApp"), (DEMO_PRIVATE_APP, "oauthPrivate")]
            {
                standin.register_app(AppRegistration {
                    client_id: client_id.to_owned(),
                    home_tenant: OTHER_TENANT.to_owned(),
                    secrets: vec![DEMO_APP_SECRET.to_owned()],
                    redirect_uris: vec![public.redirect_uri().to_string()],
                    consented_tenants: vec![OTHER_TENANT.to_owned()],
                    ..AppRegistration::default()
                });
                println!(
                    "Demo {kind} app:  client_id {client_id}, tenant_id {OTHER_TENANT}, client_secret {DEMO_APP_SECRET}"
                );
            }
            // STANDIN_AUTHORIZE_HOP=1: authorize passes the browser through another origin
            // before its sign-in page, as Entra does for personal accounts or a federated
            // domain (the browser test checks the confirmation page lets that through).
            if env("STANDIN_AUTHORIZE_HOP").as_deref() == Some("1") {
                let hop = TcpListener::bind((bind.as_str(), 0))
                    .await
                    .map_err(|e| format!("cannot listen for the authorize hop ({e})"))?;
                let hop = standin.pass_authorize_through(hop).map_err(|e| e.to_string())?;
                println!("Authorize hop:      {hop} (authorize passes through another origin)");
            }
            vars.insert(config::MICROSOFT_AUTHORITY_HOST, standin.url());
            vars.insert(
                config::MICROSOFT_GRAPH_URL,
                env(config::MICROSOFT_GRAPH_URL).unwrap_or_else(|| standin.url()),
            );
        }
    }

    let start_key = match (env(config::START_LINK_KEY), env(config::START_LINK_KEY_ARN)) {
        (_, Some(arn)) => {
            vars.insert(config::START_LINK_KEY_ARN, arn);
            None
        }
        (key, None) => {
            let key = key.unwrap_or_else(|| LOCAL_START_LINK_KEY.into());
            let arn = aws::ensure_secret(&secrets, LOCAL_START_KEY_NAME, &key).await?;
            vars.insert(config::START_LINK_KEY_ARN, arn);
            Some(key)
        }
    };

    // AutoKitteh: the user's, or the stand-in behind our front door.
    let mut standin_ak = None;
    if let Some(url) = &external_autokitteh {
        println!("AutoKitteh:         {url} (from {})", config::AUTOKITTEH_API_URL);
        vars.insert(config::AUTOKITTEH_API_URL, url.clone());
        for var in [
            config::AUTOKITTEH_UI_URL,
            config::AUTOKITTEH_API_TOKEN,
            config::AUTOKITTEH_API_TOKEN_ARN,
        ] {
            if let Some(value) = env(var) {
                vars.insert(var, value);
            }
        }
    } else if local_autokitteh {
        let port = port_var("AUTOKITTEH_STANDIN_PORT", 9200)?;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            format!("cannot listen on 127.0.0.1:{port} for the AutoKitteh stand-in ({e}); set AUTOKITTEH_STANDIN_PORT")
        })?;
        let ak = AkStandin::spawn(listener).map_err(|e| e.to_string())?;
        println!("AutoKitteh:         {} (local stand-in, NOT AutoKitteh)", ak.url());
        vars.insert(config::AUTOKITTEH_API_URL, ak.url());
        vars.insert(config::AUTOKITTEH_UI_URL, public.origin());
        let org = ak.add_org("Local org");
        let user = ak.add_user("dev@autokitteh.local", &[&org]);
        ak.add_connection(&org, Integration::Microsoft, "my_microsoft");
        ak.add_connection(&org, Integration::MicrosoftTeams, "my_teams");
        let other = ak.add_org("Another org");
        ak.add_user("outsider@another.local", &[&other]);
        ak.add_connection(&other, Integration::Microsoft, "not_yours");
        // Refreshes are written back as a service user of the local org.
        let service = ak.add_user("automation@autokitteh.local", &[&org]);
        vars.insert(config::AUTOKITTEH_API_TOKEN, ak.session_for(&service));
        standin_ak = Some((ak, user));
    }

    if services_only {
        println!("Functions:          not served here (LOCAL_SERVICES_ONLY): sam local runs them");
        println!("Table / KMS key:    {table} / {kms_key}");
        if let Some(key) = start_key {
            print_start_link(&public, &key)?;
        }
        println!("\nReady. Press Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
        println!("Stopping.");
        return Ok(());
    }

    // The functions as the template deploys them: each from the environment the resolved
    // template gives it (the same wiring as on Lambda and in the tests).
    let webhook = vars.get(config::WEBHOOK_ADDRESS).cloned().unwrap_or_default();
    let (resources, parameters) = deployment_of(&vars, &sdk).await?;
    let deployment = deploy::deployment(LOCAL_STACK, parameters, &resources);
    let environments = deploy::environments(&deployment, &webhook);
    let built = deploy::build(&|id| &environments[id], &|_| &sdk, &|_| Overrides::default())?;
    let (functions, _refresher) = built.served();
    let listener = TcpListener::bind(("127.0.0.1", listen_port)).await.map_err(|e| {
        format!("cannot listen on 127.0.0.1:{listen_port} ({e}); set WEBHOOK_ADDRESS or LOCAL_PORT")
    })?;

    println!(
        "Functions:          {} → oauth-start, {} → oauth-redirect",
        public.start_uri(),
        public.redirect_uri()
    );
    println!(
        "Redirect URI:       {} (register this in Azure to use real Microsoft)",
        public.redirect_uri()
    );
    println!("Table / KMS key:    {table} / {kms_key}");
    if let Some((ak, user)) = &standin_ak {
        let door = TcpListener::bind(("127.0.0.1", public_port)).await.map_err(|e| {
            format!("cannot listen on 127.0.0.1:{public_port} for the front door ({e}); set WEBHOOK_ADDRESS")
        })?;
        let functions_url = format!("http://127.0.0.1:{listen_port}");
        tokio::spawn(ms_oauth_tests::frontdoor::serve(door, functions_url.clone(), ak.url()));
        println!(
            "Front door:         {} (OAuth paths → {functions_url}, everything else → AutoKitteh)",
            public.origin()
        );
        println!(
            "\nOpen {}/ in a browser, sign in as dev@autokitteh.local ({user}) and press Connect.",
            public.origin()
        );
    } else if external_autokitteh.is_some() {
        println!(
            "\nFunctions on http://127.0.0.1:{listen_port}: route {} of {} here.",
            config::FUNCTION_PATHS.join(", "),
            public.origin()
        );
    } else if let Some(key) = start_key {
        print_start_link(&public, &key)?;
    }
    println!("\nReady. Press Ctrl-C to stop.");

    tokio::select! {
        () = local::serve(listener, functions) => Ok(()),
        _ = tokio::signal::ctrl_c() => {
            println!("Stopping.");
            Ok(())
        }
    }
}

/// The stack's parameters and resources from what this run settled on (`vars`, by the
/// functions' variable names): the variables a stack takes as parameters become those, the
/// resources it makes are the ones made here. Secrets given as values are kept in Secrets
/// Manager, where a stack keeps them.
async fn deployment_of(
    vars: &HashMap<&'static str, String>,
    sdk: &aws_config::SdkConfig,
) -> Result<(deploy::Resources, BTreeMap<String, String>), String> {
    let get = |var: &str| vars.get(var).cloned().unwrap_or_default();
    let mut parameters = BTreeMap::new();
    for (var, parameter) in [
        (config::MICROSOFT_CLIENT_ID, "MicrosoftClientId"),
        (config::MICROSOFT_CLIENT_SECRET_ARN, "MicrosoftClientSecretArn"),
        (config::MICROSOFT_TENANT_ID, "MicrosoftTenantId"),
        (config::MICROSOFT_SCOPES, "MicrosoftScopes"),
        (config::MICROSOFT_AUTHORITY_HOST, "MicrosoftAuthorityHost"),
        (config::MICROSOFT_GRAPH_URL, "MicrosoftGraphUrl"),
        (config::TOKEN_REFRESH_MARGIN_SECONDS, "TokenRefreshMarginSeconds"),
        (config::EVENT_BUS_NAME, "EventBusName"),
        (config::AUTOKITTEH_API_URL, "AutoKittehApiUrl"),
        (config::AUTOKITTEH_UI_URL, "AutoKittehUiUrl"),
        (config::AUTOKITTEH_DASHBOARD_URL, "AutoKittehDashboardUrl"),
        (config::AUTOKITTEH_API_TOKEN_ARN, "AutoKittehApiTokenArn"),
    ] {
        if let Some(value) = vars.get(var) {
            parameters.insert(parameter.to_owned(), value.clone());
        }
    }
    if let Some(token) = vars.get(config::AUTOKITTEH_API_TOKEN) {
        let secrets = aws_sdk_secretsmanager::Client::new(sdk);
        let arn = aws::ensure_secret(&secrets, LOCAL_AK_TOKEN_NAME, token).await?;
        parameters.insert("AutoKittehApiTokenArn".to_owned(), arn);
    }
    let audit_bus = format!("{LOCAL_STACK}-audit");
    let audit_bus_arn =
        aws::ensure_event_bus(&aws_sdk_eventbridge::Client::new(sdk), &audit_bus).await?;
    let resources = deploy::Resources {
        table: get(config::OAUTH_TABLE_NAME),
        shares_table: get(config::KEY_SHARES_TABLE_NAME),
        kms_key: get(config::TOKEN_KMS_KEY_ID),
        start_link_key_arn: get(config::START_LINK_KEY_ARN),
        audit_bus,
        audit_bus_arn,
    };
    Ok((resources, parameters))
}

/// Prints a start link for a new connection, signed with the local start-link key.
fn print_start_link(public: &PublicAddress, key: &str) -> Result<(), String> {
    let cid = ms_oauth_tests::new_connection_id();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let grant = ms_oauth_tests::startlink::grant(&cid, Origin::Web, MAX_GRANT_LIFETIME_SECS);
    let link = ms_oauth_tests::startlink::start_link(&public.origin(), key, &grant, now)?;
    println!(
        "\nOpen this start link in a browser (opens once, within 10 minutes; `make link` makes a new one):"
    );
    println!("START_LINK={link}");
    Ok(())
}
